/* Part of mali_layer.c, which #includes it: one translation unit, never compiled on its own. */

/* ---- enqueue-error: commands fail while memory is overcommitted -------------------------------------- */

/* Approximation: a real driver fails the submission that needs the missing pages; we fail every enqueue that
 * touches memory or runs a kernel while any overcommitted object is alive, and let clFlush/clFinish, unmaps and
 * markers through so a program can still clean up. */
static inline int overcommitted(void) { return __atomic_load_n(&g_over_alive, __ATOMIC_RELAXED) > 0; }

#define GATED(name, params, args)                                                                           \
    static cl_int CL_API_CALL l_##name params                                                               \
    {                                                                                                       \
        if (overcommitted())                                                                                \
            return (cl_int)cfg.oom_error;                                                                   \
        enqueued(q);                                                                                        \
        return next.name args;                                                                              \
    }
#define GATED_MAP(name, params, args)                                                                       \
    static void *CL_API_CALL l_##name params                                                                \
    {                                                                                                       \
        if (!overcommitted()) {                                                                             \
            enqueued(q);                                                                                    \
            return next.name args;                                                                          \
        }                                                                                                   \
        if (errcode_ret)                                                                                    \
            *errcode_ret = (cl_int)cfg.oom_error;                                                           \
        return NULL;                                                                                        \
    }
#define WAIT cl_uint nw, const cl_event *wl, cl_event *ev
typedef cl_command_queue Q;

/* A local size the Mali could not run fails as the Mali's driver fails it: above the work-item limit of a
 * dimension, or above the work-group limit in total (PoCL's own limits are far higher). So does a kernel whose
 * local memory (its own __local variables and __local arguments) passes the profile's: CL_OUT_OF_RESOURCES, the
 * spec's code for it. */
static int local_mem_exceeded(Q q, cl_kernel k)
{
    cl_device_id dev = NULL;
    cl_ulong bytes = 0;
    return next.clGetCommandQueueInfo(q, CL_QUEUE_DEVICE, sizeof dev, &dev, NULL) == CL_SUCCESS &&
           next.clGetKernelWorkGroupInfo(k, dev, CL_KERNEL_LOCAL_MEM_SIZE, sizeof bytes, &bytes, NULL) == CL_SUCCESS &&
           bytes > cfg.local_mem;
}

static cl_int CL_API_CALL l_clEnqueueNDRangeKernel(Q q, cl_kernel k, cl_uint dim, const size_t *off,
                                                   const size_t *gws, const size_t *lws, WAIT)
{
    uint64_t total = 1;
    for (cl_uint i = 0; lws && i < dim && i < 3; i++) {
        if (lws[i] > cfg.max_work_group_size)
            return CL_INVALID_WORK_ITEM_SIZE;
        total = mul_sat(total, lws[i]);
    }
    if (lws && total > cfg.max_work_group_size)
        return CL_INVALID_WORK_GROUP_SIZE;
    if (local_mem_exceeded(q, k))
        return CL_OUT_OF_RESOURCES;
    if (overcommitted())
        return (cl_int)cfg.oom_error;
    enqueued(q);
    return next.clEnqueueNDRangeKernel(q, k, dim, off, gws, lws, nw, wl, ev);
}

static cl_int CL_API_CALL l_clEnqueueUnmapMemObject(Q q, cl_mem m, void *p, WAIT)
{
    enqueued(q);
    return next.clEnqueueUnmapMemObject(q, m, p, nw, wl, ev);
}

/* A kernel's largest work group is at most the device's: clients size their launches from it. */
static cl_int CL_API_CALL l_clGetKernelWorkGroupInfo(cl_kernel k, cl_device_id dev, cl_kernel_work_group_info param,
                                                     size_t size, void *value, size_t *size_ret)
{
    size_t wg = 0;
    if (param != CL_KERNEL_WORK_GROUP_SIZE ||
        next.clGetKernelWorkGroupInfo(k, dev, param, sizeof wg, &wg, NULL) != CL_SUCCESS)
        return next.clGetKernelWorkGroupInfo(k, dev, param, size, value, size_ret);
    if (wg > cfg.max_work_group_size)
        wg = cfg.max_work_group_size;
    return answer(&wg, sizeof wg, size, value, size_ret);
}
GATED(clEnqueueTask, (Q q, cl_kernel k, WAIT), (q, k, nw, wl, ev))
GATED(clEnqueueReadBuffer, (Q q, cl_mem b, cl_bool blk, size_t off, size_t n, void *p, WAIT),
      (q, b, blk, off, n, p, nw, wl, ev))
GATED(clEnqueueWriteBuffer, (Q q, cl_mem b, cl_bool blk, size_t off, size_t n, const void *p, WAIT),
      (q, b, blk, off, n, p, nw, wl, ev))
GATED(clEnqueueCopyBuffer, (Q q, cl_mem s, cl_mem d, size_t so, size_t dof, size_t n, WAIT),
      (q, s, d, so, dof, n, nw, wl, ev))
GATED(clEnqueueFillBuffer, (Q q, cl_mem b, const void *pat, size_t ps, size_t off, size_t n, WAIT),
      (q, b, pat, ps, off, n, nw, wl, ev))
GATED(clEnqueueReadBufferRect, (Q q, cl_mem b, cl_bool blk, const size_t *bo, const size_t *ho, const size_t *r,
      size_t brp, size_t bsp, size_t hrp, size_t hsp, void *p, WAIT), (q, b, blk, bo, ho, r, brp, bsp, hrp, hsp, p,
      nw, wl, ev))
GATED(clEnqueueWriteBufferRect, (Q q, cl_mem b, cl_bool blk, const size_t *bo, const size_t *ho, const size_t *r,
      size_t brp, size_t bsp, size_t hrp, size_t hsp, const void *p, WAIT), (q, b, blk, bo, ho, r, brp, bsp, hrp,
      hsp, p, nw, wl, ev))
GATED(clEnqueueCopyBufferRect, (Q q, cl_mem s, cl_mem d, const size_t *so, const size_t *dof, const size_t *r,
      size_t srp, size_t ssp, size_t drp, size_t dsp, WAIT), (q, s, d, so, dof, r, srp, ssp, drp, dsp, nw, wl, ev))
GATED(clEnqueueReadImage, (Q q, cl_mem i, cl_bool blk, const size_t *o, const size_t *r, size_t rp, size_t sp,
      void *p, WAIT), (q, i, blk, o, r, rp, sp, p, nw, wl, ev))
GATED(clEnqueueWriteImage, (Q q, cl_mem i, cl_bool blk, const size_t *o, const size_t *r, size_t rp, size_t sp,
      const void *p, WAIT), (q, i, blk, o, r, rp, sp, p, nw, wl, ev))
GATED(clEnqueueCopyImage, (Q q, cl_mem s, cl_mem d, const size_t *so, const size_t *dof, const size_t *r, WAIT),
      (q, s, d, so, dof, r, nw, wl, ev))
GATED(clEnqueueFillImage, (Q q, cl_mem i, const void *c, const size_t *o, const size_t *r, WAIT),
      (q, i, c, o, r, nw, wl, ev))
GATED(clEnqueueCopyImageToBuffer, (Q q, cl_mem s, cl_mem d, const size_t *so, const size_t *r, size_t dof, WAIT),
      (q, s, d, so, r, dof, nw, wl, ev))
GATED(clEnqueueCopyBufferToImage, (Q q, cl_mem s, cl_mem d, size_t so, const size_t *dof, const size_t *r, WAIT),
      (q, s, d, so, dof, r, nw, wl, ev))
GATED_MAP(clEnqueueMapBuffer, (Q q, cl_mem b, cl_bool blk, cl_map_flags f, size_t off, size_t n, WAIT,
          cl_int *errcode_ret), (q, b, blk, f, off, n, nw, wl, ev, errcode_ret))
GATED_MAP(clEnqueueMapImage, (Q q, cl_mem i, cl_bool blk, cl_map_flags f, const size_t *o, const size_t *r,
          size_t *rp, size_t *sp, WAIT, cl_int *errcode_ret), (q, i, blk, f, o, r, rp, sp, nw, wl, ev, errcode_ret))

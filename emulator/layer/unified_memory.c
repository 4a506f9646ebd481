/* Part of mali_layer.c, which #includes it: one translation unit, never compiled on its own. */

/* ---- unified memory: a buffer is the board's RAM from its allocation ----------------------------------- */

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux >= 5.14; older headers lack the name */
#endif

#define HUGE_PAGE (2u << 20)

/* Commits [p, p + size) for writing without changing what it holds: the kernel populates the pages in one call
 * (no fault per page); a kernel without MADV_POPULATE_WRITE gets one read-and-write-back per page instead.
 * Large buffers are offered transparent huge pages first, as Arm's kernel driver can back allocations with 2 MiB
 * pages: committing then costs what the board pays, zeroing the memory, rather than one fault per 4 KiB, which
 * on a virtual machine (a trap to the host per page it has not backed yet) ran 5-20x slower than a memset. The
 * advice stays on the mapping, so it is given only to mappings the layer owns. Returns -1 when the kernel
 * cannot supply the pages. */
static int populate(char *p, size_t size)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), start = (uintptr_t)p & ~(page - 1);
    uintptr_t end = ((uintptr_t)p + size + page - 1) & ~(page - 1);
    if (size >= HUGE_PAGE)
        madvise((void *)start, end - start, MADV_HUGEPAGE); /* advice only: the kernel's THP policy decides */
    if (madvise((void *)start, end - start, MADV_POPULATE_WRITE) == 0)
        return 0;
    if (errno != EINVAL) /* EINVAL: a kernel older than 5.14; anything else: no pages to be had */
        return -1;
    for (volatile char *q = p; q < p + size; q = (volatile char *)(((uintptr_t)q + page) & ~(page - 1)))
        *q = *q;
    return 0;
}

/* A Mali driver takes a buffer's pages from the kernel (zeroed) when the buffer is allocated, and gives them back
 * when it is freed. PoCL's CPU device takes storage from malloc, which differs twice: Linux commits each page
 * only at its first write (RAM peaks and OOM verdicts then depended on when PoCL's queue got round to writing),
 * and once glibc's mmap threshold has risen past a freed block's size (it follows freed blocks up to 32 MiB),
 * later buffers come from the heap, whose pages stay in the process after the buffer is released and are mixed
 * with the application's own objects (measured: RssAnon kept every freed buffer of a second round of 3-30 MiB
 * buffers; a job's RAM growth then depended on what earlier jobs had left in the heap). So the layer gives each
 * buffer of COMMIT_MIN or more storage of its own, as a driver does: an anonymous mapping, populated before
 * clCreateBuffer returns, handed to PoCL as CL_MEM_USE_HOST_PTR (PoCL's CPU device computes in that memory: no
 * copy) and unmapped when PoCL destroys the object (a destructor callback, the spec's signal that host_ptr may
 * go). Left to PoCL: USE_HOST_PTR (the application's own memory), objects enqueue-error lets live beyond the
 * cap (every use of them fails), and buffers under COMMIT_MIN, of which at most COMMIT_MIN each may go
 * uncommitted. A buffer whose pages cannot be had fails to create, as a driver short of pages fails. The
 * application still sees the flags it asked for (l_clGetMemObjectInfo). */
#define COMMIT_MIN (64u << 10)

struct owned { /* storage the layer gave a buffer: the flags the application asked for, and what to unmap */
    cl_mem mem;
    cl_mem_flags flags;
    void *storage;
    size_t size;
    struct owned *next;
};
static struct owned *g_owned; /* a short list: only clGetMemObjectInfo's two answers and destruction search it */
static pthread_mutex_t g_owned_lock = PTHREAD_MUTEX_INITIALIZER;

/* Registered after on_destroyed, so it runs first (newest first): the pages are gone before the counters say so. */
static void CL_CALLBACK on_storage_free(cl_mem mem, void *data)
{
    struct owned *o = data;
    (void)mem;
    pthread_mutex_lock(&g_owned_lock);
    for (struct owned **p = &g_owned; *p; p = &(*p)->next)
        if (*p == o) {
            *p = o->next;
            break;
        }
    pthread_mutex_unlock(&g_owned_lock);
    munmap(o->storage, o->size);
    free(o);
}

/* Ties storage from create_buffer to its object; NULL (the object released, the storage unmapped) if it cannot. */
static cl_mem keep_storage(cl_mem mem, struct owned *o, cl_int *errcode_ret)
{
    if (mem && next.clSetMemObjectDestructorCallback(mem, on_storage_free, o) == CL_SUCCESS) {
        pthread_mutex_lock(&g_owned_lock);
        o->next = g_owned;
        g_owned = o;
        pthread_mutex_unlock(&g_owned_lock);
        return mem;
    }
    if (mem) {
        next.clReleaseMemObject(mem); /* nothing would ever unmap its storage; no command uses it yet */
        if (errcode_ret)
            *errcode_ret = CL_OUT_OF_HOST_MEMORY;
    }
    munmap(o->storage, o->size);
    free(o);
    return NULL;
}

/* Pages for a buffer of `size` bytes, committed (and holding `copy` if not NULL), or NULL with *err set. */
static void *own_storage(size_t size, const void *copy, cl_int *err)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED && populate(p, size) == 0) {
        if (copy)
            memcpy(p, copy, size);
        return p;
    }
    if (p != MAP_FAILED)
        munmap(p, size);
    *err = CL_MEM_OBJECT_ALLOCATION_FAILURE;
    return NULL;
}

/* The largest buffer the backend under the layer creates on the context's (first) device; 0 when it does not
 * say. A request past it goes to the backend as it is, for its own refusal, before the layer commits pages for
 * it: committing first spent 30 s and the size in RAM on a request PoCL then refused (an 8 GiB buffer). */
static cl_ulong backend_max_alloc(cl_context c)
{
    cl_device_id dev = NULL;
    cl_ulong most = 0;
    if (next.clGetContextInfo(c, CL_CONTEXT_DEVICES, sizeof dev, &dev, NULL) != CL_SUCCESS || dev == NULL ||
        next.clGetDeviceInfo(dev, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof most, &most, NULL) != CL_SUCCESS)
        return 0;
    return most;
}

typedef cl_mem (*create_fn)(cl_context, const cl_mem_properties *, cl_mem_flags, size_t, void *, cl_int *);

static cl_mem create_plain(cl_context c, const cl_mem_properties *p, cl_mem_flags f, size_t size, void *host,
                           cl_int *err)
{
    (void)p;
    return next.clCreateBuffer(c, f, size, host, err);
}

/* clCreateBuffer(WithProperties) with the layer's own storage where the comment above says so; that storage is
 * handed back in *owned for CREATE_COUNTED to tie to the object once it is counted. */
static cl_mem create_buffer(create_fn create, cl_context c, const cl_mem_properties *props, cl_mem_flags f,
                            size_t size, void *host, uint64_t ticket, cl_int *err, struct owned **owned)
{
    const cl_mem_flags host_flags = CL_MEM_USE_HOST_PTR | CL_MEM_COPY_HOST_PTR | CL_MEM_ALLOC_HOST_PTR;
    int copies = (f & CL_MEM_COPY_HOST_PTR) != 0;
    /* malformed requests (a host pointer without its flag, or the reverse) go to PoCL for its own error */
    if (size < COMMIT_MIN || (ticket & OVER_BIT) || (f & CL_MEM_USE_HOST_PTR) || (copies != (host != NULL)))
        return create(c, props, f, size, host, err);
    cl_ulong most = backend_max_alloc(c);
    if (most != 0 && size > most) /* the backend refuses it: no pages to commit first */
        return create(c, props, f, size, host, err);
    struct owned *o = calloc(1, sizeof *o);
    void *storage = o ? own_storage(size, host, err) : NULL;
    if (!o)
        *err = CL_OUT_OF_HOST_MEMORY;
    cl_mem mem = storage ? create(c, props, (f & ~host_flags) | CL_MEM_USE_HOST_PTR, size, storage, err) : NULL;
    if (mem) {
        *o = (struct owned){mem, f, storage, size, NULL};
        *owned = o;
        return mem;
    }
    if (storage)
        munmap(storage, size);
    free(o);
    return NULL;
}

static cl_mem CL_API_CALL l_clCreateBuffer(cl_context c, cl_mem_flags f, size_t size, void *host,
                                           cl_int *errcode_ret)
{
    /* ticket_ is CREATE_COUNTED's: whether this object lives beyond the cap */
    CREATE_COUNTED(size, 1, create_buffer(create_plain, c, NULL, f, size, host, ticket_, &err_, &owned_));
}

static cl_mem CL_API_CALL l_clCreateBufferWithProperties(cl_context c, const cl_mem_properties *p, cl_mem_flags f,
                                                         size_t size, void *host, cl_int *errcode_ret)
{
    CREATE_COUNTED(size, 1, create_buffer(next.clCreateBufferWithProperties, c, p, f, size, host, ticket_, &err_,
                                            &owned_));
}

/* A buffer on the layer's storage answers with the flags and host pointer it was created with. */
static cl_int CL_API_CALL l_clGetMemObjectInfo(cl_mem mem, cl_mem_info param, size_t size, void *value,
                                               size_t *size_ret)
{
    if (param == CL_MEM_FLAGS || param == CL_MEM_HOST_PTR) {
        cl_mem_flags flags = 0;
        void *host = NULL; /* the spec's CL_MEM_HOST_PTR for a buffer not made with USE_HOST_PTR */
        int found = 0;
        pthread_mutex_lock(&g_owned_lock);
        for (struct owned *o = g_owned; o && !found; o = o->next)
            if (o->mem == mem) {
                flags = o->flags;
                found = 1;
            }
        pthread_mutex_unlock(&g_owned_lock);
        if (found && param == CL_MEM_FLAGS)
            return answer(&flags, sizeof flags, size, value, size_ret);
        if (found)
            return answer(&host, sizeof host, size, value, size_ret);
    }
    return next.clGetMemObjectInfo(mem, param, size, value, size_ret);
}

static uint64_t pixel_bytes(const cl_image_format *fmt)
{
    uint64_t per_channel = 4, channels = 4;
    switch (fmt->image_channel_data_type) {
    case CL_UNORM_SHORT_565: case CL_UNORM_SHORT_555: return 2; /* packed: whole pixel */
    case CL_UNORM_INT_101010: case CL_UNORM_INT24: case CL_UNORM_INT_101010_2: return 4;
    case CL_SNORM_INT8: case CL_UNORM_INT8: case CL_SIGNED_INT8: case CL_UNSIGNED_INT8: per_channel = 1; break;
    case CL_SNORM_INT16: case CL_UNORM_INT16: case CL_SIGNED_INT16: case CL_UNSIGNED_INT16: case CL_HALF_FLOAT:
        per_channel = 2; break;
    default: break; /* 32-bit types, and unknown ones counted at the largest size */
    }
    switch (fmt->image_channel_order) {
    case CL_R: case CL_A: case CL_INTENSITY: case CL_LUMINANCE: case CL_DEPTH: channels = 1; break;
    case CL_RG: case CL_RA: case CL_Rx: channels = 2; break;
    case CL_RGB: case CL_RGx: case CL_sRGB: channels = 3; break;
    default: break;
    }
    return per_channel * channels;
}

static uint64_t mul_sat(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}

/* Bytes of storage an image of its own needs (callers pass images of buffers straight through). */
static uint64_t image_bytes(const cl_image_format *fmt, const cl_image_desc *d)
{
    if (!fmt || !d)
        return 0;
    uint64_t row = d->image_row_pitch ? d->image_row_pitch : mul_sat(d->image_width, pixel_bytes(fmt));
    uint64_t plane = d->image_slice_pitch ? d->image_slice_pitch : mul_sat(row, d->image_height);
    switch (d->image_type) {
    case CL_MEM_OBJECT_IMAGE1D: return row;
    case CL_MEM_OBJECT_IMAGE1D_ARRAY: return mul_sat(d->image_slice_pitch ? d->image_slice_pitch : row,
                                                     d->image_array_size);
    case CL_MEM_OBJECT_IMAGE2D: return mul_sat(row, d->image_height);
    case CL_MEM_OBJECT_IMAGE2D_ARRAY: return mul_sat(plane, d->image_array_size);
    case CL_MEM_OBJECT_IMAGE3D: return mul_sat(plane, d->image_depth);
    default: return 0; /* 1D-from-buffer, or a type PoCL will refuse anyway */
    }
}

/* An image the Mali could not hold fails as its driver fails it (CL_INVALID_IMAGE_SIZE, the spec's code): a
 * dimension above the profile's image limits, or, where the driver refuses objects above its max allocation,
 * more bytes than that (a buffer of the size would get over_max_alloc; PoCL takes either). */
static cl_int image_refusal(const cl_image_format *fmt, const cl_image_desc *d)
{
    if (!d)
        return CL_SUCCESS; /* PoCL gives the proper error */
    uint64_t w = d->image_width, h = d->image_height, depth = d->image_depth, layers = d->image_array_size;
    uint64_t flat = cfg.image2d_max_size, deep = cfg.image3d_max_size;
    int over = 0;
    switch (d->image_type) {
    case CL_MEM_OBJECT_IMAGE1D_BUFFER: over = w > cfg.image_max_buffer_size; break;
    case CL_MEM_OBJECT_IMAGE1D: over = w > flat; break;
    case CL_MEM_OBJECT_IMAGE1D_ARRAY: over = w > flat || layers > cfg.image_max_array_size; break;
    case CL_MEM_OBJECT_IMAGE2D: over = w > flat || h > flat; break;
    case CL_MEM_OBJECT_IMAGE2D_ARRAY: over = w > flat || h > flat || layers > cfg.image_max_array_size; break;
    case CL_MEM_OBJECT_IMAGE3D: over = w > deep || h > deep || depth > deep; break;
    default: break;
    }
    if (!over && !d->buffer && cfg.over_max_alloc != 0 && image_bytes(fmt, d) > cfg.max_alloc)
        over = 1;
    if (over) {
        ADD(g.events[FAILED], 1);
        publish_stats();
    }
    return over ? CL_INVALID_IMAGE_SIZE : CL_SUCCESS;
}

#define REFUSE_IMAGE(fmt, d)                                                                                \
    do {                                                                                                    \
        cl_int refused_ = image_refusal((fmt), (d));                                                        \
        if (refused_ != CL_SUCCESS) {                                                                       \
            if (errcode_ret)                                                                                \
                *errcode_ret = refused_;                                                                    \
            return NULL;                                                                                    \
        }                                                                                                   \
    } while (0)

static cl_mem CL_API_CALL l_clCreateImage(cl_context c, cl_mem_flags f, const cl_image_format *fmt,
                                          const cl_image_desc *d, void *host, cl_int *errcode_ret)
{
    REFUSE_IMAGE(fmt, d);
    if (d && d->buffer)
        return next.clCreateImage(c, f, fmt, d, host, errcode_ret);
    CREATE_COUNTED(image_bytes(fmt, d), 0, next.clCreateImage(c, f, fmt, d, host, &err_));
}

static cl_mem CL_API_CALL l_clCreateImageWithProperties(cl_context c, const cl_mem_properties *p, cl_mem_flags f,
                                                        const cl_image_format *fmt, const cl_image_desc *d,
                                                        void *host, cl_int *errcode_ret)
{
    REFUSE_IMAGE(fmt, d);
    if (d && d->buffer)
        return next.clCreateImageWithProperties(c, p, f, fmt, d, host, errcode_ret);
    CREATE_COUNTED(image_bytes(fmt, d), 0, next.clCreateImageWithProperties(c, p, f, fmt, d, host, &err_));
}

static cl_mem CL_API_CALL l_clCreateImage2D(cl_context c, cl_mem_flags f, const cl_image_format *fmt, size_t w,
                                            size_t h, size_t pitch, void *host, cl_int *errcode_ret)
{
    cl_image_desc d = {.image_type = CL_MEM_OBJECT_IMAGE2D, .image_width = w, .image_height = h,
                       .image_row_pitch = pitch};
    REFUSE_IMAGE(fmt, &d);
    CREATE_COUNTED(image_bytes(fmt, &d), 0, next.clCreateImage2D(c, f, fmt, w, h, pitch, host, &err_));
}

static cl_mem CL_API_CALL l_clCreateImage3D(cl_context c, cl_mem_flags f, const cl_image_format *fmt, size_t w,
                                            size_t h, size_t depth, size_t row_pitch, size_t slice_pitch,
                                            void *host, cl_int *errcode_ret)
{
    cl_image_desc d = {.image_type = CL_MEM_OBJECT_IMAGE3D, .image_width = w, .image_height = h,
                       .image_depth = depth, .image_row_pitch = row_pitch, .image_slice_pitch = slice_pitch};
    REFUSE_IMAGE(fmt, &d);
    CREATE_COUNTED(image_bytes(fmt, &d), 0,
                   next.clCreateImage3D(c, f, fmt, w, h, depth, row_pitch, slice_pitch, host, &err_));
}

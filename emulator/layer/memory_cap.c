/* Part of mali_layer.c, which #includes it: one translation unit, never compiled on its own. */

/* ---- memory cap -------------------------------------------------------------------------------------- */

static void oom_kill(uint64_t bytes)
{
    write_stats_file(); /* the kill leaves no other chance to report */
    fprintf(stderr, "mali-hil layer: out of device memory (%llu more bytes over a %llu-byte cap): SIGKILL, as "
                    "the OOM killer on a unified-memory board\n", (unsigned long long)bytes,
            (unsigned long long)cfg.global_mem);
    raise(SIGKILL);
}

/* Takes `bytes` of the cap before PoCL runs, so two threads cannot both get the last free megabyte. */
static int try_reserve(uint64_t bytes)
{
    uint64_t used = LOAD(g.used);
    do {
        if (bytes > cfg.global_mem || used > cfg.global_mem - bytes)
            return 0;
    } while (!__atomic_compare_exchange_n(&g.used, &used, used + bytes, 1, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED));
    return 1;
}

/* Decides whether `bytes` more may exist. Returns CL_SUCCESS with the object's ticket (see OVER_BIT), or the
 * code clCreate* must fail with. */
static cl_int admit(uint64_t bytes, int is_buffer, uint64_t *ticket)
{
    if (is_buffer && bytes > cfg.max_alloc && cfg.over_max_alloc != 0) {
        __atomic_store_n(&g_last_refused, bytes, __ATOMIC_RELAXED);
        ADD(g.events[FAILED], 1);
        return (cl_int)cfg.over_max_alloc;
    }
    *ticket = bytes & ~OVER_BIT;
    if (!cfg.cap_enforced) { /* libmali: global memory is a figure, not a limit; the board's RAM decides */
        uint64_t was = __atomic_fetch_add(&g.used, bytes, __ATOMIC_ACQ_REL);
        if (was + bytes > cfg.global_mem)
            ADD(g.events[OVERCOMMITTED], was >= cfg.global_mem ? bytes : was + bytes - cfg.global_mem);
        return CL_SUCCESS;
    }
    if (try_reserve(bytes))
        return CL_SUCCESS;
    settle(SETTLE_TIMEOUT_NS); /* memory being freed right now is not missing memory */
    if (try_reserve(bytes))
        return CL_SUCCESS;
    __atomic_store_n(&g_last_refused, bytes, __ATOMIC_RELAXED);
    if (cfg.oom == OOM_ENQUEUE_ERROR) {
        *ticket |= OVER_BIT;
        return CL_SUCCESS;
    }
    ADD(g.events[FAILED], 1);
    if (cfg.oom == OOM_KILL)
        oom_kill(bytes);
    return (cl_int)cfg.oom_error;
}

static int is_size_refusal(cl_int err)
{
    return err == CL_INVALID_BUFFER_SIZE || err == CL_INVALID_IMAGE_SIZE || err == CL_OUT_OF_RESOURCES ||
           err == CL_OUT_OF_HOST_MEMORY || err == CL_MEM_OBJECT_ALLOCATION_FAILURE;
}

static void CL_CALLBACK on_destroyed(cl_mem mem, void *data)
{
    uint64_t ticket = (uint64_t)(uintptr_t)data;
    (void)mem;
    if (ticket & OVER_BIT)
        __atomic_sub_fetch(&g_over_alive, 1, __ATOMIC_RELAXED);
    else
        __atomic_sub_fetch(&g.used, ticket, __ATOMIC_RELEASE);
    ADD(g.events[DESTROYED], 1);
    publish_stats(); /* fidelity-driver: the last counters must survive a kill */
    if (LOAD(g_late_armed) && t_late_done) { /* only now are the bytes back: wake whoever waits for it */
        pthread_mutex_lock(&g_lock);
        if (t_late_epoch == g_late_epoch)
            g_late_pending -= t_late_done < g_late_pending ? t_late_done : g_late_pending;
        __atomic_sub_fetch(&g_late_armed, t_late_done, __ATOMIC_RELAXED);
        t_late_done = 0;
        pthread_cond_broadcast(&g_settled);
        pthread_mutex_unlock(&g_lock);
    }
}

/* PoCL runs destructor callbacks newest first, so this runs just before on_destroyed of the same object and on
 * the same thread: it leaves a note for on_destroyed, which reports the death once the bytes are given back. */
static void CL_CALLBACK on_late_destroyed(cl_mem mem, void *data)
{
    uint64_t epoch = (uint64_t)(uintptr_t)data;
    (void)mem;
    if (t_late_done && t_late_epoch != epoch) { /* a stale note nobody consumed: drop it */
        __atomic_sub_fetch(&g_late_armed, t_late_done, __ATOMIC_RELAXED);
        t_late_done = 0;
    }
    t_late_epoch = epoch;
    t_late_done++;
}

/* A release that leaves references behind may be the program's last one while PoCL still holds the object for
 * a queued command: watch it. Objects viewing another (sub-buffers, images of buffers) carry no bytes. */
static cl_int CL_API_CALL l_clReleaseMemObject(cl_mem mem)
{
    cl_uint refs = 0;
    cl_mem parent = NULL;
    int late = 0;
    if (next.clGetMemObjectInfo(mem, CL_MEM_REFERENCE_COUNT, sizeof refs, &refs, NULL) == CL_SUCCESS && refs > 1 &&
        next.clGetMemObjectInfo(mem, CL_MEM_ASSOCIATED_MEMOBJECT, sizeof parent, &parent, NULL) == CL_SUCCESS &&
        !parent) {
        pthread_mutex_lock(&g_lock);
        uint64_t epoch = g_late_epoch;
        g_late_pending++;
        pthread_mutex_unlock(&g_lock);
        ADD(g_late_armed, 1);
        if (next.clSetMemObjectDestructorCallback(mem, on_late_destroyed, (void *)(uintptr_t)epoch) != CL_SUCCESS) {
            __atomic_sub_fetch(&g_late_armed, 1, __ATOMIC_RELAXED);
            pthread_mutex_lock(&g_lock);
            g_late_pending -= epoch == g_late_epoch && g_late_pending;
            pthread_mutex_unlock(&g_lock);
        } else {
            late = 1;
        }
    }
    cl_int rc = next.clReleaseMemObject(mem);
    if (rc == CL_SUCCESS && late && queues_idle())
        settle(RELEASE_SETTLE_TIMEOUT_NS); /* in use by nothing: PoCL drops its reference in moments */
    return rc;
}

static void raise_peak(void)
{
    uint64_t now = LOAD(g.used), peak = LOAD(g.peak);
    while (now > peak && !__atomic_compare_exchange_n(&g.peak, &peak, now, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

/* Turns a reservation into a live object, or gives it back when PoCL said no. */
static cl_mem settle_create(cl_mem mem, cl_int err, uint64_t ticket, cl_int *errcode_ret)
{
    uint64_t bytes = ticket & ~OVER_BIT;
    int watched = mem && next.clSetMemObjectDestructorCallback(mem, on_destroyed, (void *)(uintptr_t)ticket) == 0;
    if (mem && !watched)
        fprintf(stderr, "mali-hil layer: cannot watch a memory object for its end; its bytes are not counted\n");
    if (!watched && !(ticket & OVER_BIT))
        __atomic_sub_fetch(&g.used, bytes, __ATOMIC_RELEASE);
    if (watched && (ticket & OVER_BIT)) {
        __atomic_add_fetch(&g_over_alive, 1, __ATOMIC_RELAXED);
        ADD(g.events[OVERCOMMITTED], bytes);
    } else if (watched) {
        raise_peak();
    } else if (!mem && bytes > 0 && is_size_refusal(err)) {
        ADD(g.events[REFUSED], 1); /* PoCL's own limit (e.g. its largest single buffer), not the profile's */
    }
    if (watched)
        ADD(g.events[CREATED], 1);
    if (errcode_ret)
        *errcode_ret = err;
    return mem;
}

/* What every storage-creating entry point shares: admit, let PoCL create, settle. `call` may hand over storage
 * of the layer's own in owned_ (create_buffer), to be unmapped when the object dies. */
#define CREATE_COUNTED(bytes, is_buffer, call)                                                             \
    do {                                                                                                    \
        uint64_t ticket_ = 0;                                                                               \
        struct owned *owned_ = NULL;                                                                        \
        cl_int rc_ = admit((bytes), (is_buffer), &ticket_), err_ = CL_SUCCESS;                              \
        if (rc_ != CL_SUCCESS) {                                                                            \
            if (errcode_ret)                                                                                \
                *errcode_ret = rc_;                                                                         \
            publish_stats(); /* a refusal counts too */                                                     \
            return NULL;                                                                                    \
        }                                                                                                   \
        cl_mem mem_ = call; /* sets err_, and owned_ if it gave the object storage */                       \
        mem_ = settle_create(mem_, err_, ticket_, errcode_ret);                                             \
        if (owned_)                                                                                         \
            mem_ = keep_storage(mem_, owned_, errcode_ret);                                                 \
        publish_stats();                                                                                    \
        return mem_;                                                                                        \
    } while (0)

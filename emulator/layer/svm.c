/* Part of mali_layer.c, which #includes it: one translation unit, never compiled on its own. */

/* ---- shared virtual memory: counted like buffers where the driver offers it, absent where it does not ------ */

/* libmali on Bifrost and Valhall offers OpenCL 2.0 coarse-grained SVM; Midgard's OpenCL 1.2 and rusticl on
 * panfrost offer none (the profile's svm_capabilities, with its source). Where there is none, clSVMAlloc answers
 * NULL, as the spec says for a device without SVM. Where there is, an SVM block is device memory like a buffer:
 * refused above the max allocation (the spec's NULL), admitted against the cap by the profile's rule (an
 * enqueue-error driver cannot fail later here: clSVMAlloc has no error code, so it answers NULL), committed
 * before clSVMAlloc returns (pages of the board's RAM, as a buffer's), counted in the stats, and given back at
 * clSVMFree or when clEnqueueSVMFree is enqueued (approximation: a real driver frees when the command runs). */
struct svm_block {
    void *ptr;
    uint64_t bytes;
    struct svm_block *next;
};
static struct svm_block *g_svm; /* live SVM blocks: clSVMFree must know the size of what it frees */
static pthread_mutex_t g_svm_lock = PTHREAD_MUTEX_INITIALIZER;

static void *CL_API_CALL l_clSVMAlloc(cl_context c, cl_svm_mem_flags flags, size_t size, cl_uint alignment)
{
    const cl_svm_mem_flags fine = CL_MEM_SVM_FINE_GRAIN_BUFFER | CL_MEM_SVM_ATOMICS;
    uint64_t ticket = 0;
    if (!(cfg.svm_capabilities & CL_DEVICE_SVM_COARSE_GRAIN_BUFFER) ||
        ((flags & fine) && !(cfg.svm_capabilities & CL_DEVICE_SVM_FINE_GRAIN_BUFFER)) || size == 0)
        return NULL;
    if (admit(size, 1, &ticket) != CL_SUCCESS || (ticket & OVER_BIT)) {
        publish_stats();
        return NULL;
    }
    struct svm_block *block = malloc(sizeof *block);
    void *ptr = block ? next.clSVMAlloc(c, flags, size, alignment) : NULL;
    if (ptr && populate(ptr, size) != 0) { /* no pages to be had: a driver short of pages fails the allocation */
        next.clSVMFree(c, ptr);
        ptr = NULL;
    }
    if (!ptr) {
        free(block);
        __atomic_sub_fetch(&g.used, size, __ATOMIC_RELEASE); /* admit counted them, whatever the trigger */
        ADD(g.events[REFUSED], 1);
        publish_stats();
        return NULL;
    }
    *block = (struct svm_block){ptr, size, NULL};
    pthread_mutex_lock(&g_svm_lock);
    block->next = g_svm;
    g_svm = block;
    pthread_mutex_unlock(&g_svm_lock);
    raise_peak();
    ADD(g.events[CREATED], 1);
    publish_stats();
    return ptr;
}

/* Gives back the bytes of the block at `ptr`, if the layer counted one there. */
static void uncount_svm(void *ptr)
{
    struct svm_block *dead = NULL;
    pthread_mutex_lock(&g_svm_lock);
    for (struct svm_block **it = &g_svm; *it; it = &(*it)->next)
        if ((*it)->ptr == ptr) {
            dead = *it;
            *it = dead->next;
            break;
        }
    pthread_mutex_unlock(&g_svm_lock);
    if (!dead)
        return;
    __atomic_sub_fetch(&g.used, dead->bytes, __ATOMIC_RELEASE);
    ADD(g.events[DESTROYED], 1);
    free(dead);
    publish_stats();
}

static void CL_API_CALL l_clSVMFree(cl_context c, void *ptr)
{
    next.clSVMFree(c, ptr);
    uncount_svm(ptr);
}

static cl_int CL_API_CALL l_clEnqueueSVMFree(cl_command_queue q, cl_uint n, void *ptrs[],
                                             void(CL_CALLBACK *done)(cl_command_queue, cl_uint, void *[], void *),
                                             void *user, cl_uint nw, const cl_event *wl, cl_event *ev)
{
    cl_int err = next.clEnqueueSVMFree(q, n, ptrs, done, user, nw, wl, ev);
    for (cl_uint i = 0; err == CL_SUCCESS && ptrs && i < n; i++)
        uncount_svm(ptrs[i]);
    return err;
}

/* Part of mali_layer.c, which #includes it: one translation unit, never compiled on its own. */

/* ---- state ------------------------------------------------------------------------------------------- */

static cl_icd_dispatch next;  /* the loader's table below us: where every call finally goes */
static cl_icd_dispatch layer; /* what we hand the loader: `next` with our entries on top */
static int g_init_state;      /* 0 not yet, 1 active, -1 config refused */
static pid_t g_init_pid;      /* a forked child that exits normally must not overwrite its parent's stats */
static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER;

/* Counters are atomics so create/release take no lock. Event counters only ever grow; a reset records their
 * current values as a base instead of zeroing them, which keeps live_objects = created - destroyed exact. */
#define ADD(field, n) __atomic_add_fetch(&(field), (n), __ATOMIC_RELAXED)
#define LOAD(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)
enum { CREATED, DESTROYED, FAILED, REFUSED, OVERCOMMITTED, NEVENTS };
static struct {
    uint64_t used; /* bytes of live objects within the cap, plus reservations whose clCreate* is in flight */
    uint64_t peak, generation;
    uint64_t events[NEVENTS], base[NEVENTS];
} g;
static int g_over_alive; /* objects alive beyond the cap (enqueue-error); read on every enqueue */
static uint64_t g_last_refused; /* size of the last request refused or overcommitted: the "needed" of an OOM */
static int g_fp16 = -1;  /* -1: not decided yet (decided on the first device query) */

/* What the destructor callback must give back, carried in its user_data pointer itself: the object's bytes,
 * and the top bit if it lives beyond the cap. No per-object allocation, nothing to leak. */
#define OVER_BIT (UINT64_C(1) << 63)
_Static_assert(sizeof(void *) == sizeof(uint64_t), "the ticket rides in a pointer: 64-bit hosts only");

/* Late deaths. PoCL marks a command complete (so clFinish returns) and only then, on its worker thread, drops
 * the command's references to its buffers: a buffer the program released while a command still used it dies a
 * few microseconds AFTER clFinish (milliseconds when the cores are busy). Counter readers and over-cap decisions
 * wait for such deaths (bounded), so they see what the program may expect after clFinish, and no allocation fails
 * for memory being freed; so does a release made when every queue is finished (queues_idle), so that the program's
 * next buffer never lives beside one it freed. */
#define SETTLE_TIMEOUT_NS 1000000000L /* generous: a loaded CI machine can leave PoCL's thread unscheduled */
/* A release waits less: what outlives it that long is held by the program itself (a retain, a sub-buffer). */
#define RELEASE_SETTLE_TIMEOUT_NS 250000000L
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER; /* guards the late-death state only */
static pthread_cond_t g_settled = PTHREAD_COND_INITIALIZER;
static uint64_t g_late_pending, g_late_epoch;
static uint64_t g_late_armed;                       /* notes not yet consumed: 0 keeps TLS off the hot path */
static __thread uint64_t t_late_done, t_late_epoch; /* handed from on_late_destroyed to on_destroyed */

/* Waits, with g_lock held, until late deaths have landed. Timing out means something real still holds the
 * object (a running kernel, a live sub-buffer); a new epoch then stops anyone from waiting for it again. */
static void settle_locked(long timeout_ns)
{
    struct timespec deadline;
    if (!g_late_pending)
        return;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ns / 1000000000L;
    deadline.tv_nsec += timeout_ns % 1000000000L;
    deadline.tv_sec += deadline.tv_nsec / 1000000000L;
    deadline.tv_nsec %= 1000000000L;
    while (g_late_pending)
        if (pthread_cond_timedwait(&g_settled, &g_lock, &deadline) == ETIMEDOUT) {
            g_late_epoch++;
            g_late_pending = 0;
        }
}

static void settle(long timeout_ns)
{
    pthread_mutex_lock(&g_lock);
    settle_locked(timeout_ns);
    pthread_mutex_unlock(&g_lock);
}

/* Whether every queue has been finished since its last command. Then a buffer the program releases is in use by
 * nothing, and a driver frees it at once, while PoCL drops its last reference only later on its own thread:
 * l_clReleaseMemObject waits for that death, so neither the counters nor the RAM see the released buffer and the
 * program's next one alive together. A buffer released while commands may still use it is left to die when they
 * end, as on a board. Tracked per queue in a small table; a program with more queues than it holds is never
 * taken to be idle (no waiting, as before). Commands are counted where the layer hooks them (every buffer,
 * image, map, unmap and kernel enqueue); markers and barriers name no buffer, and a buffer released while an
 * uncounted migration (clEnqueueMigrateMemObjects) still runs is waited for, at most the release's timeout. */
#define QUEUE_SLOTS 16
static struct { cl_command_queue q; uint64_t enqueued, finished; } g_queues[QUEUE_SLOTS];
static int g_queues_overflow;
static pthread_mutex_t g_queue_lock = PTHREAD_MUTEX_INITIALIZER;

static int queue_slot_locked(cl_command_queue q)
{
    int free_slot = -1;
    for (int i = 0; i < QUEUE_SLOTS; i++) {
        if (g_queues[i].q == q)
            return i;
        if (!g_queues[i].q && free_slot < 0)
            free_slot = i;
    }
    if (free_slot < 0)
        g_queues_overflow = 1;
    else
        g_queues[free_slot].q = q, g_queues[free_slot].enqueued = g_queues[free_slot].finished = 0;
    return free_slot;
}

static void enqueued(cl_command_queue q)
{
    pthread_mutex_lock(&g_queue_lock);
    int i = queue_slot_locked(q);
    if (i >= 0)
        g_queues[i].enqueued++;
    pthread_mutex_unlock(&g_queue_lock);
}

static int queues_idle(void)
{
    int idle = 1;
    pthread_mutex_lock(&g_queue_lock);
    for (int i = 0; i < QUEUE_SLOTS && idle; i++)
        idle = !g_queues[i].q || g_queues[i].finished >= g_queues[i].enqueued;
    idle = idle && !g_queues_overflow;
    pthread_mutex_unlock(&g_queue_lock);
    return idle;
}

static cl_int CL_API_CALL l_clFinish(cl_command_queue q)
{
    pthread_mutex_lock(&g_queue_lock);
    int i = queue_slot_locked(q);
    uint64_t upto = i >= 0 ? g_queues[i].enqueued : 0; /* commands enqueued while it waits are not covered */
    pthread_mutex_unlock(&g_queue_lock);
    cl_int rc = next.clFinish(q);
    if (rc == CL_SUCCESS && i >= 0) {
        pthread_mutex_lock(&g_queue_lock);
        if (g_queues[i].q == q && g_queues[i].finished < upto)
            g_queues[i].finished = upto;
        pthread_mutex_unlock(&g_queue_lock);
    }
    return rc;
}

static cl_int CL_API_CALL l_clReleaseCommandQueue(cl_command_queue q)
{
    cl_uint refs = 0;
    if (next.clGetCommandQueueInfo(q, CL_QUEUE_REFERENCE_COUNT, sizeof refs, &refs, NULL) == CL_SUCCESS &&
        refs == 1) { /* its last reference: PoCL finishes its commands, and its address may come back */
        pthread_mutex_lock(&g_queue_lock);
        for (int i = 0; i < QUEUE_SLOTS; i++)
            if (g_queues[i].q == q)
                g_queues[i].q = NULL;
        pthread_mutex_unlock(&g_queue_lock);
    }
    return next.clReleaseCommandQueue(q);
}

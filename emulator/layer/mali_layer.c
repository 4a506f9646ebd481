/* mali-hil OpenCL layer: puts a Mali face and a Mali memory budget on PoCL's CPU device.
 *
 * The ICD loader (ocl-icd, or the Khronos loader) inserts this layer between the application and PoCL when
 * OPENCL_LAYERS names it. It changes three things and passes everything else through untouched:
 *   1. identity: platform/device strings, limits and extensions come from the profile (MALI_HIL_LAYER_CONFIG);
 *      the device reports itself as a GPU, because clients such as tinygrad ask for a GPU first.
 *   2. memory: the bytes of all live memory objects never exceed the profile's global memory. Past it the
 *      layer fails the way the profiled driver fails: an error from clCreate*, an error at the next enqueue,
 *      or SIGKILL, as the Linux OOM killer ends a process on a unified-memory board; or, for a driver whose
 *      global memory is no limit (oom_trigger=ram: libmali), not at all, leaving it to the board's RAM. A new
 *      buffer gets pages of its own, committed before clCreateBuffer returns and unmapped when the buffer dies,
 *      so device memory is RAM from its allocation to its release, as on a board (see create_buffer).
 *   3. honesty: a profile's extension is advertised only if the backend (or the layer) honours it, e.g.
 *      cl_khr_fp16 only if PoCL can really compile half arithmetic; no bf16 extension is ever advertised and a
 *      source naming __bf16 fails to build as on a Mali; a local work size above the profile's limits fails at
 *      enqueue as on the Mali.
 *
 * Config problems (no env var, unreadable file, bad or missing key) print one line to stderr and make
 * clInitLayer fail: the loader then drops the layer and the process runs on plain PoCL, never on a
 * half-configured Mali.
 *
 * Capacity is returned from a destructor callback, not from clReleaseMemObject: a memory object dies only when
 * its last reference is gone AND no queued command uses it, and only the driver knows when that is.
 * Sub-buffers and images made from a buffer add nothing (they share storage that was already counted).
 *
 * Known approximations: the OOM kill happens at the allocation that passes the cap (the kernel's killer acts
 * when pages are touched); enqueue-error fails every memory or kernel enqueue while anything overcommitted is
 * alive, not only the ones that touch it. The cap counts object sizes, not PoCL's own bookkeeping.
 *
 * Exported for in-process readers (ctypes): mali_hil_layer_stats() and mali_hil_layer_reset(). At exit, and
 * just before an OOM kill, the counters go to MALI_HIL_STATS_FILE as one JSON object.
 */
#define _GNU_SOURCE
#define CL_TARGET_OPENCL_VERSION 300
#define CL_USE_DEPRECATED_OPENCL_1_0_APIS
#define CL_USE_DEPRECATED_OPENCL_1_1_APIS
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS
#define CL_USE_DEPRECATED_OPENCL_2_0_APIS
#define CL_NO_PROTOTYPES /* newer headers declare clInitLayerWithProperties with their own property type */
#include <CL/cl_layer.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#ifndef CL_LAYER_NAME
#define CL_LAYER_NAME 0x4241
#endif
typedef intptr_t mali_layer_properties; /* cl_layer_properties; Debian 12's header predates it */
static cl_int answer(const void *src, size_t n, size_t size, void *value, size_t *size_ret); /* clGet*Info */

/* ---- config ------------------------------------------------------------------------------------------ */

enum oom_mode { OOM_ALLOC_ERROR, OOM_ENQUEUE_ERROR, OOM_KILL };

static struct {
    const char *platform_name, *platform_vendor, *platform_version, *platform_extensions, *platform_icd_suffix;
    const char *device_name, *device_vendor, *device_version, *driver_version, *opencl_c_version;
    const char *extensions, *oom_failure, *oom_trigger;
    uint64_t vendor_id, global_mem, max_alloc, max_work_group_size, compute_units, max_clock_mhz, unified_memory;
    int64_t oom_error, over_max_alloc;
    enum oom_mode oom;
    char *extensions_no_bf16, *platform_extensions_no_bf16; /* the profile's lists minus anything bf16 */
    char *ext_shown, *platform_ext_shown; /* of those, what the backend or the layer honours (decided once) */
    int cap_enforced; /* oom_trigger "both": the device counter fails allocations too; "ram": only the RAM does */
} cfg;

enum kind { K_STR, K_U64, K_I64 };
static const struct { const char *key; enum kind kind; void *dst; } KEYS[] = {
    {"platform_name", K_STR, &cfg.platform_name},       {"platform_vendor", K_STR, &cfg.platform_vendor},
    {"platform_version", K_STR, &cfg.platform_version}, {"device_name", K_STR, &cfg.device_name},
    {"device_vendor", K_STR, &cfg.device_vendor},       {"vendor_id", K_U64, &cfg.vendor_id},
    {"device_version", K_STR, &cfg.device_version},     {"driver_version", K_STR, &cfg.driver_version},
    {"opencl_c_version", K_STR, &cfg.opencl_c_version}, {"extensions", K_STR, &cfg.extensions},
    {"global_mem", K_U64, &cfg.global_mem},             {"max_alloc", K_U64, &cfg.max_alloc},
    {"max_work_group_size", K_U64, &cfg.max_work_group_size}, {"compute_units", K_U64, &cfg.compute_units},
    {"max_clock_mhz", K_U64, &cfg.max_clock_mhz},       {"unified_memory", K_U64, &cfg.unified_memory},
    {"oom_failure", K_STR, &cfg.oom_failure},           {"oom_error", K_I64, &cfg.oom_error},
    {"over_max_alloc", K_I64, &cfg.over_max_alloc},
    {"platform_extensions", K_STR, &cfg.platform_extensions}, {"platform_icd_suffix", K_STR, &cfg.platform_icd_suffix},
    {"oom_trigger", K_STR, &cfg.oom_trigger},
};
#define NKEYS (sizeof KEYS / sizeof KEYS[0])

static int complain(const char *what, const char *detail)
{
    fprintf(stderr, "mali-hil layer: %s%s; layer disabled, OpenCL runs on plain PoCL (write the config with "
                    "emulator.board.EmulatedBoard.environ())\n", what, detail ? detail : "");
    return -1;
}

static int store_value(unsigned i, char *value)
{
    char *end = value;
    if (KEYS[i].kind == K_STR)
        *(const char **)KEYS[i].dst = value;
    else if (KEYS[i].kind == K_U64)
        *(uint64_t *)KEYS[i].dst = strtoull(value, &end, 0);
    else
        *(int64_t *)KEYS[i].dst = strtoll(value, &end, 0);
    return KEYS[i].kind != K_STR && (end == value || *end != '\0') ? -1 : 0;
}

/* Keeps the profile's order; drops anything bf16 (belt and braces: profile.py already refuses those). */
static char *filter_extensions(const char *list)
{
    char *out = calloc(1, strlen(list) + 1), *copy = strdup(list), *save = NULL;
    if (!out || !copy) {
        free(copy);
        free(out);
        return NULL;
    }
    for (char *tok = strtok_r(copy, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
        if (strcasestr(tok, "bf16") || strcasestr(tok, "bfloat16"))
            continue;
        if (*out)
            strcat(out, " ");
        strcat(out, tok);
    }
    free(copy);
    return out;
}

static int parse_config(char *text, const char *path)
{
    char where[512];
    unsigned seen = 0, lineno = 0;
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        lineno++;
        if (*line == '\0' || *line == '#')
            continue;
        char *eq = strchr(line, '=');
        unsigned i = 0;
        if (eq)
            *eq = '\0';
        while (eq && i < NKEYS && strcmp(KEYS[i].key, line) != 0)
            i++;
        snprintf(where, sizeof where, "%s line %u", path, lineno);
        if (!eq || i == NKEYS || store_value(i, eq + 1) != 0)
            return complain("bad config line (want a known key=value): ", where);
        seen |= 1u << i;
    }
    for (unsigned i = 0; i < NKEYS; i++)
        if (!(seen & (1u << i)))
            return complain("config is missing key ", KEYS[i].key);
    if (strcmp(cfg.oom_failure, "alloc-error") == 0)
        cfg.oom = OOM_ALLOC_ERROR;
    else if (strcmp(cfg.oom_failure, "enqueue-error") == 0)
        cfg.oom = OOM_ENQUEUE_ERROR;
    else if (strcmp(cfg.oom_failure, "oom-kill") == 0)
        cfg.oom = OOM_KILL;
    else
        return complain("oom_failure must be alloc-error, enqueue-error or oom-kill, got ", cfg.oom_failure);
    if (strcmp(cfg.oom_trigger, "ram") != 0 && strcmp(cfg.oom_trigger, "both") != 0)
        return complain("oom_trigger must be ram or both, got ", cfg.oom_trigger);
    cfg.cap_enforced = strcmp(cfg.oom_trigger, "both") == 0;
    cfg.extensions_no_bf16 = filter_extensions(cfg.extensions);
    cfg.platform_extensions_no_bf16 = filter_extensions(cfg.platform_extensions);
    return cfg.extensions_no_bf16 && cfg.platform_extensions_no_bf16 ? 0 : complain("out of memory reading ", path);
}

static int load_config(void)
{
    const char *path = getenv("MALI_HIL_LAYER_CONFIG");
    if (!path || !*path)
        return complain("MALI_HIL_LAYER_CONFIG is not set", NULL);
    FILE *f = fopen(path, "r");
    if (!f)
        return complain("cannot open config file ", path);
    static char text[64 * 1024]; /* the strings in cfg point into it for the life of the process */
    size_t n = fread(text, 1, sizeof text - 1, f);
    int too_big = !feof(f);
    fclose(f);
    if (too_big)
        return complain("config file is larger than 64 KiB: ", path);
    text[n] = '\0';
    return parse_config(text, path);
}

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

/* ---- stats ------------------------------------------------------------------------------------------- */

#define MALI_HIL_STATS_VERSION 2
#define MALI_HIL_COUNTERS(X)                                                                                \
    X(generation) X(live_bytes) X(peak_bytes) X(live_objects) X(allocations) X(frees) X(failed_allocations) \
    X(backend_refusals) X(overcommitted_bytes) X(cap_bytes) X(fp16_advertised) X(last_refused_bytes)

struct mali_hil_stats { /* every field uint64_t, so ctypes mirrors it without padding questions */
    uint64_t version;   /* MALI_HIL_STATS_VERSION; fields are only ever appended */
    uint64_t active;    /* 1 once a loader initialised the layer with a valid config */
#define FIELD(name) uint64_t name;
    MALI_HIL_COUNTERS(FIELD)
#undef FIELD
};

static uint64_t since_reset(int event) { return LOAD(g.events[event]) - LOAD(g.base[event]); }

/* Copies the first min(size, sizeof) bytes; returns the layer's struct size (so a reader can see it got it
 * all), or -1 if out is NULL. Exact when no clCreate* or late death is in flight in another thread. */
/* The counters as they stand, without waiting for late deaths (safe in a destructor callback). */
static void fill_stats(struct mali_hil_stats *s)
{
    memset(s, 0, sizeof *s);
    s->version = MALI_HIL_STATS_VERSION;
    s->active = __atomic_load_n(&g_init_state, __ATOMIC_ACQUIRE) == 1;
    s->generation = LOAD(g.generation);
    s->live_bytes = LOAD(g.used);
    s->peak_bytes = LOAD(g.peak);
    s->live_objects = LOAD(g.events[CREATED]) - LOAD(g.events[DESTROYED]);
    s->allocations = since_reset(CREATED);
    s->frees = since_reset(DESTROYED);
    s->failed_allocations = since_reset(FAILED);
    s->backend_refusals = since_reset(REFUSED);
    s->overcommitted_bytes = since_reset(OVERCOMMITTED);
    s->cap_bytes = cfg.global_mem;
    s->fp16_advertised = __atomic_load_n(&g_fp16, __ATOMIC_ACQUIRE) == 1;
    s->last_refused_bytes = __atomic_load_n(&g_last_refused, __ATOMIC_RELAXED);
}

/* Copies the first min(size, sizeof) bytes; returns the layer's struct size (so a reader can see it got it
 * all), or -1 if out is NULL. Exact when no clCreate* or late death is in flight in another thread. */
EXPORT int mali_hil_layer_stats(struct mali_hil_stats *out, size_t size)
{
    struct mali_hil_stats s;
    if (!out)
        return -1;
    settle(SETTLE_TIMEOUT_NS);
    fill_stats(&s);
    memcpy(out, &s, size < sizeof s ? size : sizeof s);
    return (int)sizeof s;
}

/* Last counters that survive a SIGKILL. A process killed from outside (the RAM watchdog, the kernel's OOM
 * killer, a timeout) runs no exit handler, so the JSON file of write_stats_file never appears. The layer keeps
 * a binary snapshot in MALI_HIL_STATS_FILE + ".live", a MAP_SHARED file it updates after every allocation, free
 * and reset with a memcpy (no system call): the page cache keeps what the dead process last wrote. Two slots and
 * an index, so a writer killed mid-copy leaves the index on the previous complete slot. Read by stats.py. */
#define LIVE_MAGIC UINT64_C(0x6d616c692d6c6976) /* "mali-liv" */
struct live_snapshot {
    uint64_t magic, index;
    struct mali_hil_stats slot[2];
};
static struct live_snapshot *g_live;
static pthread_mutex_t g_live_lock = PTHREAD_MUTEX_INITIALIZER;

static void publish_stats(void)
{
    struct mali_hil_stats s;
    if (!g_live || getpid() != g_init_pid) /* a forked child must not overwrite its parent's snapshot */
        return;
    fill_stats(&s);
    pthread_mutex_lock(&g_live_lock);
    uint64_t spare = g_live->index ^ 1;
    g_live->slot[spare] = s;
    __atomic_store_n(&g_live->index, spare, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&g_live_lock);
}

static void open_live_stats(void)
{
    const char *path = getenv("MALI_HIL_STATS_FILE");
    char live[4096];
    if (!path || !*path || snprintf(live, sizeof live, "%s.live", path) >= (int)sizeof live)
        return;
    int fd = open(live, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    void *map = MAP_FAILED;
    if (fd >= 0 && ftruncate(fd, sizeof *g_live) == 0)
        map = mmap(NULL, sizeof *g_live, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (fd >= 0)
        close(fd);
    if (map == MAP_FAILED) {
        fprintf(stderr, "mali-hil layer: cannot map live stats file %s; a killed process leaves no counters\n", live);
        return;
    }
    g_live = map;
    g_live->magic = LIVE_MAGIC;
    publish_stats();
}

/* Starts a new measurement: peak restarts from what is live now; event counters restart from zero. */
EXPORT void mali_hil_layer_reset(void)
{
    settle(SETTLE_TIMEOUT_NS);
    for (int i = 0; i < NEVENTS; i++)
        __atomic_store_n(&g.base[i], LOAD(g.events[i]), __ATOMIC_RELAXED);
    __atomic_store_n(&g.peak, LOAD(g.used), __ATOMIC_RELAXED);
    __atomic_store_n(&g_last_refused, 0, __ATOMIC_RELAXED);
    ADD(g.generation, 1);
    publish_stats();
}

/* Atomic (tmp + rename) so a reader never sees half a file, even when the process is about to die. */
static void write_stats_file(void)
{
    const char *path = getenv("MALI_HIL_STATS_FILE");
    struct mali_hil_stats s;
    char tmp[4096], json[2048];
    int n = 0;
    if (!path || !*path || g_init_state != 1 || getpid() != g_init_pid || mali_hil_layer_stats(&s, sizeof s) < 0)
        return;
    const char *sep = "{";
#define JSON(name)                                                                                          \
    n += snprintf(json + n, sizeof json - n, "%s\"" #name "\": %llu", sep, (unsigned long long)s.name);     \
    sep = ", ";
    MALI_HIL_COUNTERS(JSON)
#undef JSON
    snprintf(json + n, sizeof json - n, "}\n");
    if (snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid()) >= (int)sizeof tmp)
        return;
    FILE *f = fopen(tmp, "w");
    int ok = f && fputs(json, f) >= 0;
    if (f)
        ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        fprintf(stderr, "mali-hil layer: cannot write stats file %s\n", path);
        unlink(tmp);
    }
}

__attribute__((destructor)) static void at_exit_write_stats(void) { write_stats_file(); }

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

static cl_mem CL_API_CALL l_clCreateImage(cl_context c, cl_mem_flags f, const cl_image_format *fmt,
                                          const cl_image_desc *d, void *host, cl_int *errcode_ret)
{
    if (d && d->buffer)
        return next.clCreateImage(c, f, fmt, d, host, errcode_ret);
    CREATE_COUNTED(image_bytes(fmt, d), 0, next.clCreateImage(c, f, fmt, d, host, &err_));
}

static cl_mem CL_API_CALL l_clCreateImageWithProperties(cl_context c, const cl_mem_properties *p, cl_mem_flags f,
                                                        const cl_image_format *fmt, const cl_image_desc *d,
                                                        void *host, cl_int *errcode_ret)
{
    if (d && d->buffer)
        return next.clCreateImageWithProperties(c, p, f, fmt, d, host, errcode_ret);
    CREATE_COUNTED(image_bytes(fmt, d), 0, next.clCreateImageWithProperties(c, p, f, fmt, d, host, &err_));
}

static cl_mem CL_API_CALL l_clCreateImage2D(cl_context c, cl_mem_flags f, const cl_image_format *fmt, size_t w,
                                            size_t h, size_t pitch, void *host, cl_int *errcode_ret)
{
    cl_image_desc d = {.image_type = CL_MEM_OBJECT_IMAGE2D, .image_width = w, .image_height = h,
                       .image_row_pitch = pitch};
    CREATE_COUNTED(image_bytes(fmt, &d), 0, next.clCreateImage2D(c, f, fmt, w, h, pitch, host, &err_));
}

static cl_mem CL_API_CALL l_clCreateImage3D(cl_context c, cl_mem_flags f, const cl_image_format *fmt, size_t w,
                                            size_t h, size_t depth, size_t row_pitch, size_t slice_pitch,
                                            void *host, cl_int *errcode_ret)
{
    cl_image_desc d = {.image_type = CL_MEM_OBJECT_IMAGE3D, .image_width = w, .image_height = h,
                       .image_depth = depth, .image_row_pitch = row_pitch, .image_slice_pitch = slice_pitch};
    CREATE_COUNTED(image_bytes(fmt, &d), 0,
                   next.clCreateImage3D(c, f, fmt, w, h, depth, row_pitch, slice_pitch, host, &err_));
}

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
 * dimension, or above the work-group limit in total (PoCL's own limits are far higher). */
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

/* ---- bf16: refused by the compiler, as Mali's is ------------------------------------------------------ */

/* Mali's OpenCL compiler has no bf16 type: a kernel naming `__bf16` fails to build with "unknown type name"
 * (exo issues 95/145/155), whatever PoCL's own clang would accept. The layer refuses clBuildProgram and
 * clCompileProgram of such a source before PoCL sees it and answers the build log and status the way Mali does.
 * Only the token `__bf16` is refused: `bfloat16` or `bf16` are ordinary identifiers (a typedef of ushort named
 * bfloat16 builds on a Mali). Comments and string/char literals are skipped; a token in a branch the
 * preprocessor drops (#if 0) still counts, which a real compiler would ignore (approximation). */
#define BF16_TOKEN "__bf16"
#define BF16_LOG_MAX (16 * 1024)

struct refused_program {
    cl_program program;
    char *log;
    struct refused_program *next;
};
static struct refused_program *g_refused; /* programs whose build we failed, with the log we answer */
static pthread_mutex_t g_refused_lock = PTHREAD_MUTEX_INITIALIZER;

static int ident_char(char c)
{
    return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* Appends one clang-style diagnostic per `__bf16` token (line:column, the line, a caret) to `log`, as Mali's
 * clang-based compiler prints them. Returns how many tokens were found. */
static unsigned scan_bf16(const char *src, char *log, size_t cap)
{
    unsigned found = 0, line = 1;
    size_t used = strlen(log);
    const char *line_start = src;
    for (const char *p = src; *p;) {
        if (p[0] == '/' && p[1] == '/') {
            while (*p && *p != '\n')
                p++;
        } else if (p[0] == '/' && p[1] == '*') {
            for (p += 2; *p && !(p[0] == '*' && p[1] == '/'); p++)
                if (*p == '\n')
                    line++, line_start = p + 1;
            p += *p ? 2 : 0;
        } else if (*p == '"' || *p == '\'') {
            char quote = *p++;
            while (*p && *p != quote && *p != '\n')
                p += (p[0] == '\\' && p[1]) ? 2 : 1;
            p += *p == quote;
        } else if (ident_char(*p) && !(*p >= '0' && *p <= '9')) {
            const char *start = p;
            while (ident_char(*p))
                p++;
            if ((size_t)(p - start) == strlen(BF16_TOKEN) && memcmp(start, BF16_TOKEN, p - start) == 0) {
                int col = (int)(start - line_start), width = (int)strcspn(line_start, "\n");
                found++;
                if (used < cap)
                    used += snprintf(log + used, cap - used, "<source>:%u:%d: error: unknown type name '%s'\n"
                                     "%.*s\n%*s^\n", line, col + 1, BF16_TOKEN, width, line_start, col, "");
            }
        } else {
            if (*p == '\n')
                line++, line_start = p + 1;
            p++;
        }
    }
    if (found && used < cap)
        snprintf(log + used, cap - used, "%u error%s generated.\n", found, found == 1 ? "" : "s");
    return found;
}

/* The Mali build log for `program`'s source, or NULL if it uses no bf16 type (or has no source: binaries). */
static char *bf16_log(cl_program program)
{
    size_t n = 0;
    char *src = NULL, *log = NULL;
    if (next.clGetProgramInfo(program, CL_PROGRAM_SOURCE, 0, NULL, &n) != CL_SUCCESS || n <= 1)
        return NULL;
    if ((src = malloc(n)) && (log = calloc(1, BF16_LOG_MAX)) &&
        next.clGetProgramInfo(program, CL_PROGRAM_SOURCE, n, src, NULL) == CL_SUCCESS) {
        src[n - 1] = '\0';
        if (!scan_bf16(src, log, BF16_LOG_MAX)) {
            free(log);
            log = NULL;
        }
    } else {
        free(log);
        log = NULL;
    }
    free(src);
    return log;
}

static struct refused_program **find_refused(cl_program program)
{
    struct refused_program **it = &g_refused;
    while (*it && (*it)->program != program)
        it = &(*it)->next;
    return it;
}

/* Remembers (once) that this program's build failed with `log`; takes ownership of `log`. */
static void remember_refused(cl_program program, char *log)
{
    pthread_mutex_lock(&g_refused_lock);
    struct refused_program **it = find_refused(program), *node;
    if (*it) {
        free(log);
    } else if ((node = malloc(sizeof *node))) {
        *node = (struct refused_program){program, log, NULL};
        *it = node;
    } else {
        free(log);
    }
    pthread_mutex_unlock(&g_refused_lock);
}

typedef void(CL_CALLBACK *build_notify)(cl_program, void *);

/* Non-zero (and the callback called, as PoCL does on a failed build) if `program` uses bf16. */
static int refuse_bf16(cl_program program, build_notify notify, void *user)
{
    char *log = bf16_log(program);
    if (!log)
        return 0;
    remember_refused(program, log);
    if (notify)
        notify(program, user);
    return 1;
}

static cl_int CL_API_CALL l_clBuildProgram(cl_program program, cl_uint nd, const cl_device_id *devs,
                                           const char *options, build_notify notify, void *user)
{
    if (refuse_bf16(program, notify, user))
        return CL_BUILD_PROGRAM_FAILURE;
    return next.clBuildProgram(program, nd, devs, options, notify, user);
}

static cl_int CL_API_CALL l_clCompileProgram(cl_program program, cl_uint nd, const cl_device_id *devs,
                                             const char *options, cl_uint nh, const cl_program *headers,
                                             const char **names, build_notify notify, void *user)
{
    if (refuse_bf16(program, notify, user))
        return CL_COMPILE_PROGRAM_FAILURE;
    return next.clCompileProgram(program, nd, devs, options, nh, headers, names, notify, user);
}

static cl_int CL_API_CALL l_clGetProgramBuildInfo(cl_program program, cl_device_id dev, cl_program_build_info param,
                                                  size_t size, void *value, size_t *size_ret)
{
    char *log = NULL;
    cl_int err = CL_SUCCESS;
    int refused;
    pthread_mutex_lock(&g_refused_lock);
    refused = *find_refused(program) != NULL;
    if (refused && param == CL_PROGRAM_BUILD_LOG)
        log = strdup((*find_refused(program))->log);
    pthread_mutex_unlock(&g_refused_lock);
    if (!refused || (param != CL_PROGRAM_BUILD_LOG && param != CL_PROGRAM_BUILD_STATUS))
        return next.clGetProgramBuildInfo(program, dev, param, size, value, size_ret);
    if (param == CL_PROGRAM_BUILD_STATUS) {
        cl_build_status status = CL_BUILD_ERROR;
        return answer(&status, sizeof status, size, value, size_ret);
    }
    err = log ? answer(log, strlen(log) + 1, size, value, size_ret) : CL_OUT_OF_HOST_MEMORY;
    free(log);
    return err;
}

/* Forgets a refused program when its last reference goes, so a new program at the same address starts clean. */
static cl_int CL_API_CALL l_clReleaseProgram(cl_program program)
{
    cl_uint refs = 0;
    if (next.clGetProgramInfo(program, CL_PROGRAM_REFERENCE_COUNT, sizeof refs, &refs, NULL) == CL_SUCCESS &&
        refs == 1) {
        pthread_mutex_lock(&g_refused_lock);
        struct refused_program **it = find_refused(program), *dead = *it;
        if (dead) {
            *it = dead->next;
            free(dead->log);
            free(dead);
        }
        pthread_mutex_unlock(&g_refused_lock);
    }
    return next.clReleaseProgram(program);
}

/* ---- identity ---------------------------------------------------------------------------------------- */

/* The clGet*Info protocol: NULL value -> size only; a value buffer too small -> CL_INVALID_VALUE. */
static cl_int answer(const void *src, size_t n, size_t size, void *value, size_t *size_ret)
{
    if (value) {
        if (size < n)
            return CL_INVALID_VALUE;
        memcpy(value, src, n);
    }
    if (size_ret)
        *size_ret = n;
    return CL_SUCCESS;
}
#define ANSWER_STR(s) answer((s), strlen(s) + 1, size, value, size_ret)
#define ANSWER_AS(type, v) do { type v_ = (type)(v); return answer(&v_, sizeof v_, size, value, size_ret); } while (0)

static int in_list(const char *list, const char *name)
{
    size_t len = strlen(name);
    for (const char *p = list; p && (p = strstr(p, name)); p += len)
        if ((p == list || p[-1] == ' ') && (p[len] == ' ' || p[len] == '\0'))
            return 1;
    return 0;
}

/* The backend's own answer to a string query (malloc'ed), or NULL. */
static char *backend_string(cl_device_id dev, cl_platform_id pf, cl_uint param)
{
    size_t n = 0;
    cl_int err = dev ? next.clGetDeviceInfo(dev, param, 0, NULL, &n) : next.clGetPlatformInfo(pf, param, 0, NULL, &n);
    char *text = err == CL_SUCCESS && n ? calloc(1, n + 1) : NULL;
    if (text && (dev ? next.clGetDeviceInfo(dev, param, n, text, NULL)
                     : next.clGetPlatformInfo(pf, param, n, text, NULL)) != CL_SUCCESS) {
        free(text);
        text = NULL;
    }
    return text;
}

/* Extensions the layer honours itself whatever the backend lists: the ICD loader's, the core ids the layer
 * answers (CL_DEVICE_COMPUTE_UNITS_BITFIELD_ARM), and printf, which is core OpenCL C 1.2 in every backend. */
static const char *const LAYER_HONOURED[] = {"cl_khr_icd", "cl_arm_core_id", "cl_arm_printf"};

static int honoured(const char *ext, const char *backend_dev, const char *backend_pf, cl_bool non_uniform)
{
    for (size_t i = 0; i < sizeof LAYER_HONOURED / sizeof *LAYER_HONOURED; i++)
        if (strcmp(ext, LAYER_HONOURED[i]) == 0)
            return 1;
    if (strcmp(ext, "cl_arm_non_uniform_work_group_size") == 0)
        return non_uniform; /* what the extension promises is the backend's non-uniform work-group support */
    return in_list(backend_dev, ext) || in_list(backend_pf, ext);
}

static char *keep_honoured(const char *list, const char *backend_dev, const char *backend_pf, cl_bool non_uniform)
{
    char *out = calloc(1, strlen(list) + 1), *copy = strdup(list), *save = NULL;
    for (char *tok = copy && out ? strtok_r(copy, " ", &save) : NULL; tok; tok = strtok_r(NULL, " ", &save))
        if (honoured(tok, backend_dev, backend_pf, non_uniform)) {
            if (*out)
                strcat(out, " ");
            strcat(out, tok);
        }
    free(copy);
    return out;
}

/* Decides once which of the profile's extensions are advertised: those the backend (PoCL) or the layer honours.
 * A kernel or entry point the device claims to support must work (cl_khr_fp16: half must compile); one that
 * cannot is hidden, so a client takes its fallback, as on a driver without it (clGetExtensionFunctionAddress
 * of a hidden extension's function is PoCL's NULL). There is one PoCL device, and its answers never change. */
static pthread_mutex_t g_ext_lock = PTHREAD_MUTEX_INITIALIZER;
static void decide_extensions(cl_device_id dev, cl_platform_id pf)
{
    pthread_mutex_lock(&g_ext_lock);
    if (!cfg.ext_shown) {
        cl_device_id first = dev;
        if (!first && next.clGetDeviceIDs(pf, CL_DEVICE_TYPE_ALL, 1, &first, NULL) != CL_SUCCESS)
            first = NULL;
        if (!pf && dev)
            next.clGetDeviceInfo(dev, CL_DEVICE_PLATFORM, sizeof pf, &pf, NULL);
        cl_bool non_uniform = CL_FALSE;
        char *bdev = first ? backend_string(first, NULL, CL_DEVICE_EXTENSIONS) : NULL;
        char *bpf = pf ? backend_string(NULL, pf, CL_PLATFORM_EXTENSIONS) : NULL;
        if (first)
            next.clGetDeviceInfo(first, CL_DEVICE_NON_UNIFORM_WORK_GROUP_SUPPORT, sizeof non_uniform, &non_uniform,
                                 NULL);
        cfg.platform_ext_shown = keep_honoured(cfg.platform_extensions_no_bf16, bdev, bpf, non_uniform);
        char *shown = keep_honoured(cfg.extensions_no_bf16, bdev, bpf, non_uniform);
        __atomic_store_n(&g_fp16, shown && in_list(shown, "cl_khr_fp16"), __ATOMIC_RELEASE);
        __atomic_store_n(&cfg.ext_shown, shown, __ATOMIC_RELEASE);
        free(bdev);
        free(bpf);
    }
    pthread_mutex_unlock(&g_ext_lock);
}

static const char *device_extensions(cl_device_id dev)
{
    if (!__atomic_load_n(&cfg.ext_shown, __ATOMIC_ACQUIRE))
        decide_extensions(dev, NULL);
    return cfg.ext_shown ? cfg.ext_shown : "";
}

static const char *platform_extensions(cl_platform_id pf)
{
    if (!__atomic_load_n(&cfg.ext_shown, __ATOMIC_ACQUIRE))
        decide_extensions(NULL, pf);
    return cfg.platform_ext_shown ? cfg.platform_ext_shown : "";
}

static int fp16_shown(cl_device_id dev)
{
    device_extensions(dev);
    return __atomic_load_n(&g_fp16, __ATOMIC_ACQUIRE) == 1;
}

static cl_int answer_extensions_with_version(const char *list, size_t size, void *value, size_t *size_ret)
{
    size_t count = 0, i = 0;
    for (const char *p = list; *p; p++)
        count += (p == list || p[-1] == ' ') && *p != ' ';
    size_t n = count * sizeof(cl_name_version);
    if (value && size < n)
        return CL_INVALID_VALUE;
    for (const char *p = list; value && *p; i++) {
        size_t len = strcspn(p, " ");
        cl_name_version *nv = (cl_name_version *)value + i;
        memset(nv, 0, sizeof *nv);
        nv->version = CL_MAKE_VERSION(1, 0, 0); /* profiles list names only; 1.0.0 is what drivers mostly say */
        memcpy(nv->name, p, len < CL_NAME_VERSION_MAX_NAME_SIZE ? len : CL_NAME_VERSION_MAX_NAME_SIZE - 1);
        p += len + (p[len] == ' ');
    }
    if (size_ret)
        *size_ret = n;
    return CL_SUCCESS;
}

/* "OpenCL 1.2 v1.r13p0" -> 1.2.0, so numeric and string versions agree; 0 if the string has no version. */
static cl_version numeric_version(const char *s)
{
    unsigned major = 0, minor = 0;
    return sscanf(s, "OpenCL %u.%u", &major, &minor) == 2 ? CL_MAKE_VERSION(major, minor, 0) : 0;
}

static cl_int CL_API_CALL l_clGetPlatformInfo(cl_platform_id pf, cl_platform_info param, size_t size, void *value,
                                              size_t *size_ret)
{
    switch (param) {
    case CL_PLATFORM_NAME: return ANSWER_STR(cfg.platform_name);
    case CL_PLATFORM_VENDOR: return ANSWER_STR(cfg.platform_vendor);
    case CL_PLATFORM_VERSION: return ANSWER_STR(cfg.platform_version);
    case CL_PLATFORM_EXTENSIONS: return ANSWER_STR(platform_extensions(pf));
    case CL_PLATFORM_EXTENSIONS_WITH_VERSION:
        return answer_extensions_with_version(platform_extensions(pf), size, value, size_ret);
    case CL_PLATFORM_ICD_SUFFIX_KHR: return ANSWER_STR(cfg.platform_icd_suffix);
    case CL_PLATFORM_NUMERIC_VERSION:
        if (numeric_version(cfg.platform_version))
            ANSWER_AS(cl_version, numeric_version(cfg.platform_version));
        break;
    default: break;
    }
    return next.clGetPlatformInfo(pf, param, size, value, size_ret);
}

static cl_int CL_API_CALL l_clGetDeviceInfo(cl_device_id dev, cl_device_info param, size_t size, void *value,
                                            size_t *size_ret)
{
    switch (param) {
    case CL_DEVICE_NAME: return ANSWER_STR(cfg.device_name);
    case CL_DEVICE_VENDOR: return ANSWER_STR(cfg.device_vendor);
    case CL_DEVICE_VERSION: return ANSWER_STR(cfg.device_version);
    case CL_DRIVER_VERSION: return ANSWER_STR(cfg.driver_version);
    case CL_DEVICE_OPENCL_C_VERSION: return ANSWER_STR(cfg.opencl_c_version);
    case CL_DEVICE_EXTENSIONS: return ANSWER_STR(device_extensions(dev));
    case CL_DEVICE_EXTENSIONS_WITH_VERSION:
        return answer_extensions_with_version(device_extensions(dev), size, value, size_ret);
    case CL_DEVICE_HALF_FP_CONFIG:
        if (!fp16_shown(dev))
            ANSWER_AS(cl_device_fp_config, 0);
        break;
    case CL_DEVICE_VENDOR_ID: ANSWER_AS(cl_uint, cfg.vendor_id);
    case CL_DEVICE_GLOBAL_MEM_SIZE: ANSWER_AS(cl_ulong, cfg.global_mem);
    case CL_DEVICE_MAX_MEM_ALLOC_SIZE: ANSWER_AS(cl_ulong, cfg.max_alloc);
    case CL_DEVICE_MAX_WORK_GROUP_SIZE: ANSWER_AS(size_t, cfg.max_work_group_size);
    case CL_DEVICE_MAX_WORK_ITEM_SIZES: { /* Mali dumps show the work-group limit in each of the 3 dimensions */
        size_t sizes[3] = {cfg.max_work_group_size, cfg.max_work_group_size, cfg.max_work_group_size};
        return answer(sizes, sizeof sizes, size, value, size_ret);
    }
    case CL_DEVICE_MAX_COMPUTE_UNITS: ANSWER_AS(cl_uint, cfg.compute_units);
    case CL_DEVICE_MAX_CLOCK_FREQUENCY: ANSWER_AS(cl_uint, cfg.max_clock_mhz);
    case CL_DEVICE_HOST_UNIFIED_MEMORY: ANSWER_AS(cl_bool, cfg.unified_memory ? CL_TRUE : CL_FALSE);
    case CL_DEVICE_TYPE: ANSWER_AS(cl_device_type, CL_DEVICE_TYPE_GPU);
#ifdef CL_DEVICE_COMPUTE_UNITS_BITFIELD_ARM
    case CL_DEVICE_COMPUTE_UNITS_BITFIELD_ARM: /* cl_arm_core_id, which every profile lists: cores 0..n-1 */
        ANSWER_AS(cl_ulong, cfg.compute_units >= 64 ? ~0ULL : (1ULL << cfg.compute_units) - 1);
#endif
    case CL_DEVICE_NUMERIC_VERSION:
        if (numeric_version(cfg.device_version))
            ANSWER_AS(cl_version, numeric_version(cfg.device_version));
        break;
    default: break;
    }
    return next.clGetDeviceInfo(dev, param, size, value, size_ret);
}

/* PoCL's device is a CPU; the Mali is a GPU. A GPU request gets PoCL's devices, a CPU request gets none. */
static cl_device_type backend_type(cl_device_type asked)
{
    const cl_device_type known = CL_DEVICE_TYPE_DEFAULT | CL_DEVICE_TYPE_CPU | CL_DEVICE_TYPE_GPU |
                                 CL_DEVICE_TYPE_ACCELERATOR | CL_DEVICE_TYPE_CUSTOM;
    if (asked == CL_DEVICE_TYPE_ALL || (asked & CL_DEVICE_TYPE_GPU))
        return CL_DEVICE_TYPE_ALL;
    if (asked & ~known)
        return asked; /* invalid bits: PoCL gives the proper error */
    return asked == CL_DEVICE_TYPE_DEFAULT ? CL_DEVICE_TYPE_DEFAULT : 0;
}

static cl_int CL_API_CALL l_clGetDeviceIDs(cl_platform_id pf, cl_device_type type, cl_uint n, cl_device_id *devs,
                                           cl_uint *n_ret)
{
    cl_device_type real = backend_type(type);
    if (real == 0) {
        if (n_ret)
            *n_ret = 0;
        return CL_DEVICE_NOT_FOUND;
    }
    cl_int err = next.clGetDeviceIDs(pf, real, n, devs, n_ret);
    if (err == CL_SUCCESS && devs && n > 0)
        fp16_shown(devs[0]); /* decide now, so the stats say what every later query will answer */
    return err;
}

static cl_context CL_API_CALL l_clCreateContextFromType(const cl_context_properties *p, cl_device_type type,
                                                        void(CL_CALLBACK *notify)(const char *, const void *,
                                                                                  size_t, void *),
                                                        void *user, cl_int *errcode_ret)
{
    cl_device_type real = backend_type(type);
    if (real == 0) {
        if (errcode_ret)
            *errcode_ret = CL_DEVICE_NOT_FOUND;
        return NULL;
    }
    return next.clCreateContextFromType(p, real, notify, user, errcode_ret);
}

/* ---- layer entry points ------------------------------------------------------------------------------ */

EXPORT cl_int CL_API_CALL clGetLayerInfo(cl_layer_info param, size_t size, void *value, size_t *size_ret)
{
    switch (param) {
    case CL_LAYER_API_VERSION: ANSWER_AS(cl_layer_api_version, CL_LAYER_API_VERSION_100);
    case CL_LAYER_NAME: return ANSWER_STR("mali-hil");
    default: return CL_INVALID_VALUE;
    }
}

#define HOOK(name) if (next.name) layer.name = l_##name

static int build_tables(cl_uint num_entries, const cl_icd_dispatch *target)
{
    size_t n = num_entries < sizeof next / sizeof(void *) ? num_entries : sizeof next / sizeof(void *);
    memcpy(&next, target, n * sizeof(void *)); /* entries past what the loader knows stay NULL */
    if (!next.clSetMemObjectDestructorCallback)
        return complain("the ICD loader gave no clSetMemObjectDestructorCallback (OpenCL 1.1)", NULL);
    layer = next;
    HOOK(clGetPlatformInfo); HOOK(clGetDeviceIDs); HOOK(clGetDeviceInfo); HOOK(clCreateContextFromType);
    HOOK(clCreateBuffer); HOOK(clCreateBufferWithProperties); HOOK(clCreateImage); HOOK(clCreateImage2D);
    HOOK(clCreateImage3D); HOOK(clCreateImageWithProperties); HOOK(clReleaseMemObject);
    HOOK(clEnqueueNDRangeKernel); HOOK(clEnqueueTask); HOOK(clEnqueueReadBuffer); HOOK(clEnqueueWriteBuffer);
    HOOK(clEnqueueCopyBuffer); HOOK(clEnqueueFillBuffer); HOOK(clEnqueueReadBufferRect);
    HOOK(clEnqueueWriteBufferRect); HOOK(clEnqueueCopyBufferRect); HOOK(clEnqueueReadImage);
    HOOK(clEnqueueWriteImage); HOOK(clEnqueueCopyImage); HOOK(clEnqueueFillImage); HOOK(clEnqueueCopyImageToBuffer);
    HOOK(clEnqueueCopyBufferToImage); HOOK(clEnqueueMapBuffer); HOOK(clEnqueueMapImage);
    HOOK(clBuildProgram); HOOK(clCompileProgram); HOOK(clGetProgramBuildInfo); HOOK(clReleaseProgram);
    HOOK(clGetKernelWorkGroupInfo);
    HOOK(clGetMemObjectInfo); HOOK(clFinish); HOOK(clReleaseCommandQueue); HOOK(clEnqueueUnmapMemObject);
    return 0;
}

/* Two loaders may initialise us in one process (pyopencl bundles ocl-icd; tinygrad uses the system one) and
 * the .so, hence these globals, is shared. The first target table is kept for both: each loader's bottom table
 * forwards through the object's own dispatch pointer, i.e. to the same PoCL, so either table reaches it. */
EXPORT cl_int CL_API_CALL clInitLayer(cl_uint num_entries, const cl_icd_dispatch *target, cl_uint *num_entries_ret,
                                      const cl_icd_dispatch **layer_dispatch_ret)
{
    if (!target || !num_entries_ret || !layer_dispatch_ret)
        return CL_INVALID_VALUE;
    pthread_mutex_lock(&g_init_lock);
    if (g_init_state == 0) {
        g_init_pid = getpid();
        g_init_state = load_config() == 0 && build_tables(num_entries, target) == 0 ? 1 : -1;
        if (g_init_state == 1)
            open_live_stats();
    }
    int state = g_init_state;
    pthread_mutex_unlock(&g_init_lock);
    if (state != 1)
        return CL_INVALID_VALUE;
    *num_entries_ret = sizeof layer / sizeof(void *);
    *layer_dispatch_ret = &layer;
    return CL_SUCCESS;
}

EXPORT cl_int CL_API_CALL clInitLayerWithProperties(cl_uint num_entries, const cl_icd_dispatch *target,
                                                    cl_uint *num_entries_ret,
                                                    const cl_icd_dispatch **layer_dispatch_ret,
                                                    const mali_layer_properties *properties)
{
    (void)properties; /* none defined yet */
    return clInitLayer(num_entries, target, num_entries_ret, layer_dispatch_ret);
}

/* Tables stay valid: another loader in the process may still route calls through them. */
EXPORT cl_int CL_API_CALL clDeinitLayer(void) { return CL_SUCCESS; }

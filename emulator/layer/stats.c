/* Part of mali_layer.c, which #includes it: one translation unit, never compiled on its own. */

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
 * an index, so a writer killed mid-copy leaves the index on the previous complete slot. Read by runtime/layer_stats.py. */
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

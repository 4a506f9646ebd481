/* Part of mali_layer.c, which #includes it: one translation unit, never compiled on its own. */

/* ---- config ------------------------------------------------------------------------------------------ */

enum oom_mode { OOM_ALLOC_ERROR, OOM_ENQUEUE_ERROR, OOM_KILL };

static struct {
    const char *platform_name, *platform_vendor, *platform_version, *platform_extensions, *platform_icd_suffix;
    const char *device_name, *device_vendor, *device_version, *driver_version, *opencl_c_version;
    const char *extensions, *oom_failure, *oom_trigger, *build_log_file;
    uint64_t vendor_id, global_mem, max_alloc, max_work_group_size, compute_units, max_clock_mhz, unified_memory;
    uint64_t fp64, svm_capabilities, local_mem, max_constant_buffer, max_constant_args;
    uint64_t image2d_max_size, image3d_max_size, image_max_buffer_size, image_max_array_size;
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
    {"oom_trigger", K_STR, &cfg.oom_trigger},           {"build_log_file", K_STR, &cfg.build_log_file},
    {"fp64", K_U64, &cfg.fp64},                         {"svm_capabilities", K_U64, &cfg.svm_capabilities}, {"local_mem", K_U64, &cfg.local_mem},
    {"max_constant_buffer", K_U64, &cfg.max_constant_buffer},
    {"max_constant_args", K_U64, &cfg.max_constant_args}, {"image2d_max_size", K_U64, &cfg.image2d_max_size},
    {"image3d_max_size", K_U64, &cfg.image3d_max_size},
    {"image_max_buffer_size", K_U64, &cfg.image_max_buffer_size},
    {"image_max_array_size", K_U64, &cfg.image_max_array_size},
};
#define NKEYS (sizeof KEYS / sizeof KEYS[0])
_Static_assert(NKEYS <= 64, "parse_config marks the keys it has seen in 64 bits");

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

/* Keeps the profile's order; drops anything bf16, which no Mali has, and cl_khr_fp64 where the profile has no fp64
 * (belt and braces: profile.py already refuses those). */
static char *filter_extensions(const char *list)
{
    char *out = calloc(1, strlen(list) + 1), *copy = strdup(list), *save = NULL;
    if (!out || !copy) {
        free(copy);
        free(out);
        return NULL;
    }
    for (char *tok = strtok_r(copy, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
        if (strcasestr(tok, "bf16") || strcasestr(tok, "bfloat16") || (!cfg.fp64 && strcmp(tok, "cl_khr_fp64") == 0))
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
    uint64_t seen = 0;
    unsigned lineno = 0;
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
        seen |= 1ull << i;
    }
    for (unsigned i = 0; i < NKEYS; i++)
        if (!(seen & (1ull << i)))
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

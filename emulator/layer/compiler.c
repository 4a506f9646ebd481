/* Part of mali_layer.c, which #includes it: one translation unit, never compiled on its own. */

/* ---- the compiler: what Mali's refuses, what its kernels see, and how its build log reads -------------- */

/* Mali's OpenCL compiler has no bf16 type: a kernel naming `__bf16` fails to build with "unknown type name"
 * (exo issues 95/145/155), whatever PoCL's own clang would accept. Nor has any Mali fp64 (no cl_khr_fp64,
 * REFERENCE section 12): its clang-based compiler, without the extension, says "use of type 'double' requires
 * cl_khr_fp64 support" for `double`, and knows no `double2`..`double16` (they are declared only with fp64). The
 * layer refuses clBuildProgram and clCompileProgram of such a source before PoCL sees it and answers the build
 * log and status the way Mali does. Only these tokens are refused: `bfloat16` or `bf16` are ordinary identifiers
 * (a typedef of ushort named bfloat16 builds on a Mali). The double tokens are refused only on a profile whose driver
 * has no fp64 (Midgard's has it). Comments and string/char literals are skipped; a token
 * in a branch the preprocessor drops (#if 0, #ifdef cl_khr_fp64) still counts, which a real compiler would
 * ignore (approximation: PoCL accepts no -U, so its preprocessor cannot be asked). */
#define LOG_MAX (16 * 1024)

static const struct { const char *token, *message; int fp64; } REFUSED_TOKENS[] = {
    {"__bf16", "unknown type name '__bf16'", 0},
    {"double", "use of type 'double' requires cl_khr_fp64 support", 1},
    {"double2", "unknown type name 'double2'", 1},   {"double3", "unknown type name 'double3'", 1},
    {"double4", "unknown type name 'double4'", 1},   {"double8", "unknown type name 'double8'", 1},
    {"double16", "unknown type name 'double16'", 1},
};

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

static const char *refusal(const char *start, size_t len)
{
    for (size_t i = 0; i < sizeof REFUSED_TOKENS / sizeof *REFUSED_TOKENS; i++)
        if (strlen(REFUSED_TOKENS[i].token) == len && memcmp(start, REFUSED_TOKENS[i].token, len) == 0 &&
            !(REFUSED_TOKENS[i].fp64 && cfg.fp64))
            return REFUSED_TOKENS[i].message;
    return NULL;
}

/* Appends one clang-style diagnostic per refused token (file:line:column, the line, a caret) to `log`, as Mali's
 * clang-based compiler prints them. Returns how many tokens were found. */
static unsigned scan_refused(const char *src, char *log, size_t cap)
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
            const char *start = p, *message;
            while (ident_char(*p))
                p++;
            if ((message = refusal(start, p - start))) {
                int col = (int)(start - line_start), width = (int)strcspn(line_start, "\n");
                found++;
                if (used < cap)
                    used += snprintf(log + used, cap - used, "%s:%u:%d: error: %s\n%.*s\n%*s^\n", cfg.build_log_file,
                                     line, col + 1, message, width, line_start, col, "");
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

/* What kernels see of the device, said in their source since PoCL takes no -U: no fp64 macros where the profile
 * has no fp64 (PoCL's clang defines cl_khr_fp64 and __opencl_c_fp64) and the profile's OpenCL version in __OPENCL_VERSION__ (PoCL's is
 * 300 whatever the profile says). Put before the application's source, with #line so that diagnostics keep its
 * line numbers; CL_PROGRAM_SOURCE answers without it. */
static char g_prelude[256];

static void make_prelude(void)
{
    unsigned major = 0, minor = 0;
    if (sscanf(cfg.device_version, "OpenCL %u.%u", &major, &minor) != 2)
        major = 1, minor = 2;
    snprintf(g_prelude, sizeof g_prelude, "%s#undef __OPENCL_VERSION__\n#define __OPENCL_VERSION__ %u\n#line 1\n",
             cfg.fp64 ? "" : "#undef cl_khr_fp64\n#undef __opencl_c_fp64\n", major * 100 + minor * 10);
}

static const char *user_source(const char *src)
{
    size_t n = strlen(g_prelude);
    return n && strncmp(src, g_prelude, n) == 0 ? src + n : src;
}

static cl_program CL_API_CALL l_clCreateProgramWithSource(cl_context c, cl_uint count, const char **strings,
                                                          const size_t *lengths, cl_int *errcode_ret)
{
    if (!count || !strings || !*g_prelude) /* malformed: PoCL gives the proper error */
        return next.clCreateProgramWithSource(c, count, strings, lengths, errcode_ret);
    const char **with = malloc((count + 1) * sizeof *with);
    size_t *lens = malloc((count + 1) * sizeof *lens);
    cl_program program = NULL;
    if (with && lens) {
        with[0] = g_prelude;
        lens[0] = strlen(g_prelude);
        for (cl_uint i = 0; i < count; i++) {
            with[i + 1] = strings[i];
            lens[i + 1] = lengths ? lengths[i] : 0; /* 0: NUL-terminated, as the application said */
        }
        program = next.clCreateProgramWithSource(c, count + 1, with, lens, errcode_ret);
    } else if (errcode_ret) {
        *errcode_ret = CL_OUT_OF_HOST_MEMORY;
    }
    free(with);
    free(lens);
    return program;
}

static cl_int CL_API_CALL l_clGetProgramInfo(cl_program program, cl_program_info param, size_t size, void *value,
                                             size_t *size_ret)
{
    size_t n = 0;
    char *src = NULL;
    if (param != CL_PROGRAM_SOURCE || next.clGetProgramInfo(program, param, 0, NULL, &n) != CL_SUCCESS || n <= 1 ||
        !(src = malloc(n)) || next.clGetProgramInfo(program, param, n, src, NULL) != CL_SUCCESS) {
        free(src);
        return next.clGetProgramInfo(program, param, size, value, size_ret);
    }
    src[n - 1] = '\0';
    const char *user = user_source(src);
    cl_int err = answer(user, strlen(user) + 1, size, value, size_ret);
    free(src);
    return err;
}

/* The Mali build log for `program`'s source, or NULL if it uses no refused type (or has no source: binaries). */
static char *refusal_log(cl_program program)
{
    size_t n = 0;
    char *src = NULL, *log = NULL;
    if (next.clGetProgramInfo(program, CL_PROGRAM_SOURCE, 0, NULL, &n) != CL_SUCCESS || n <= 1)
        return NULL;
    if ((src = malloc(n)) && (log = calloc(1, LOG_MAX)) &&
        next.clGetProgramInfo(program, CL_PROGRAM_SOURCE, n, src, NULL) == CL_SUCCESS) {
        src[n - 1] = '\0';
        if (!scan_refused(user_source(src), log, LOG_MAX)) {
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

/* Non-zero (and the callback called, as PoCL does on a failed build) if `program` uses a type Mali lacks. */
static int refuse_types(cl_program program, build_notify notify, void *user)
{
    char *log = refusal_log(program);
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
    if (refuse_types(program, notify, user))
        return CL_BUILD_PROGRAM_FAILURE;
    return next.clBuildProgram(program, nd, devs, options, notify, user);
}

static cl_int CL_API_CALL l_clCompileProgram(cl_program program, cl_uint nd, const cl_device_id *devs,
                                             const char *options, cl_uint nh, const cl_program *headers,
                                             const char **names, build_notify notify, void *user)
{
    if (refuse_types(program, notify, user))
        return CL_COMPILE_PROGRAM_FAILURE;
    return next.clCompileProgram(program, nd, devs, options, nh, headers, names, notify, user);
}

/* PoCL's log names its device and its cache ("error: /root/.cache/pocl/kcache/tempfile_X.cl:1:44: ...", then
 * "Device pthread-... failed to build the program"); a Mali's is clang's own form, the source under the driver's
 * name for it ("<source>:1:44: error: ..."). Rewrites one line of PoCL's log into `out`; returns 0 to drop it. */
static int driver_line(const char *line, size_t len, char *out, size_t cap, unsigned *errors)
{
    static const char *const KINDS[] = {"error", "warning", "note"};
    if (len >= 6 && memcmp(line, "Device", 6) == 0 && strstr(line, "failed to build the program"))
        return 0;
    for (size_t k = 0; k < sizeof KINDS / sizeof *KINDS; k++) {
        size_t kl = strlen(KINDS[k]);
        const char *path = line + kl + 2, *colon;
        if (len <= kl + 2 || memcmp(line, KINDS[k], kl) != 0 || memcmp(line + kl, ": ", 2) != 0 || *path != '/' ||
            !(colon = memchr(path, ':', len - kl - 2)))
            continue;
        const char *rest = colon + 1, *base = colon;
        unsigned at_line = 0, at_col = 0;
        int used = 0;
        if (sscanf(rest, "%u:%u: %n", &at_line, &at_col, &used) != 2 || used == 0)
            continue;
        while (base > path && base[-1] != '/')
            base--;
        int is_source = colon - path >= 3 && memcmp(colon - 3, ".cl", 3) == 0;
        *errors += k == 0;
        snprintf(out, cap, "%.*s:%u:%u: %s: %.*s", is_source ? (int)strlen(cfg.build_log_file) : (int)(colon - base),
                 is_source ? cfg.build_log_file : base, at_line, at_col, KINDS[k],
                 (int)(len - (rest + used - line)), rest + used);
        return 1;
    }
    snprintf(out, cap, "%.*s", (int)len, line);
    return 1;
}

/* PoCL's build log in the driver's form (malloc'ed), or NULL if PoCL has none. */
static char *driver_log(cl_program program, cl_device_id dev)
{
    size_t n = 0;
    char *raw = NULL, *out = NULL;
    if (next.clGetProgramBuildInfo(program, dev, CL_PROGRAM_BUILD_LOG, 0, NULL, &n) != CL_SUCCESS || !n ||
        !(raw = calloc(1, n + 1)) || !(out = calloc(1, 2 * n + 64)) ||
        next.clGetProgramBuildInfo(program, dev, CL_PROGRAM_BUILD_LOG, n, raw, NULL) != CL_SUCCESS) {
        free(raw);
        free(out);
        return NULL;
    }
    size_t used = 0, cap = 2 * n + 64;
    unsigned errors = 0;
    for (const char *line = raw; *line;) {
        size_t len = strcspn(line, "\n");
        if (driver_line(line, len, out + used, cap - used - 1, &errors)) {
            used += strlen(out + used);
            out[used++] = '\n';
        }
        line += len + (line[len] == '\n');
    }
    if (errors && !strstr(out, " generated.") && used < cap)
        snprintf(out + used, cap - used, "%u error%s generated.\n", errors, errors == 1 ? "" : "s");
    return out;
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
    if (!refused && param == CL_PROGRAM_BUILD_LOG && (log = driver_log(program, dev))) {
        err = answer(log, strlen(log) + 1, size, value, size_ret);
        free(log);
        return err;
    }
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

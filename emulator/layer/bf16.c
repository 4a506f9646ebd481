/* Part of mali_layer.c, which #includes it: one translation unit, never compiled on its own. */

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

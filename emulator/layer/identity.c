/* Part of mali_layer.c, which #includes it: one translation unit, never compiled on its own. */

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

/* The backend's OpenCL C features without __opencl_c_fp64, for a profile without fp64 (PoCL's CPU device has it). */
static cl_int answer_c_features(cl_device_id dev, size_t size, void *value, size_t *size_ret)
{
    size_t n = 0, kept = 0;
    cl_name_version *all = NULL;
    cl_int err = next.clGetDeviceInfo(dev, CL_DEVICE_OPENCL_C_FEATURES, 0, NULL, &n);
    if (err != CL_SUCCESS)
        return err;
    if (n && !(all = malloc(n)))
        return CL_OUT_OF_HOST_MEMORY;
    if (n && (err = next.clGetDeviceInfo(dev, CL_DEVICE_OPENCL_C_FEATURES, n, all, NULL)) == CL_SUCCESS)
        for (size_t i = 0; i < n / sizeof *all; i++)
            if (strcmp(all[i].name, "__opencl_c_fp64") != 0)
                all[kept++] = all[i];
    if (err == CL_SUCCESS)
        err = answer(all, kept * sizeof *all, size, value, size_ret);
    free(all);
    return err;
}

/* SVM as the profile's driver offers it, and no more than the backend can do. */
static cl_device_svm_capabilities svm_capabilities(cl_device_id dev)
{
    cl_device_svm_capabilities backend = 0;
    if (next.clGetDeviceInfo(dev, CL_DEVICE_SVM_CAPABILITIES, sizeof backend, &backend, NULL) != CL_SUCCESS)
        backend = 0;
    return backend & cfg.svm_capabilities;
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
    case CL_DEVICE_DOUBLE_FP_CONFIG: /* every query agrees when the profile's driver has no fp64 */
        if (!cfg.fp64)
            ANSWER_AS(cl_device_fp_config, 0);
        break;
    case CL_DEVICE_PREFERRED_VECTOR_WIDTH_DOUBLE: case CL_DEVICE_NATIVE_VECTOR_WIDTH_DOUBLE:
        if (!cfg.fp64)
            ANSWER_AS(cl_uint, 0);
        break;
    case CL_DEVICE_OPENCL_C_FEATURES:
        if (!cfg.fp64)
            return answer_c_features(dev, size, value, size_ret);
        break;
    case CL_DEVICE_SVM_CAPABILITIES: ANSWER_AS(cl_device_svm_capabilities, svm_capabilities(dev));
    case CL_DEVICE_LOCAL_MEM_SIZE: ANSWER_AS(cl_ulong, cfg.local_mem);
    case CL_DEVICE_MAX_CONSTANT_BUFFER_SIZE: ANSWER_AS(cl_ulong, cfg.max_constant_buffer);
    case CL_DEVICE_MAX_CONSTANT_ARGS: ANSWER_AS(cl_uint, cfg.max_constant_args);
    case CL_DEVICE_IMAGE2D_MAX_WIDTH: case CL_DEVICE_IMAGE2D_MAX_HEIGHT: ANSWER_AS(size_t, cfg.image2d_max_size);
    case CL_DEVICE_IMAGE3D_MAX_WIDTH: case CL_DEVICE_IMAGE3D_MAX_HEIGHT: case CL_DEVICE_IMAGE3D_MAX_DEPTH:
        ANSWER_AS(size_t, cfg.image3d_max_size);
    case CL_DEVICE_IMAGE_MAX_BUFFER_SIZE: ANSWER_AS(size_t, cfg.image_max_buffer_size);
    case CL_DEVICE_IMAGE_MAX_ARRAY_SIZE: ANSWER_AS(size_t, cfg.image_max_array_size);
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

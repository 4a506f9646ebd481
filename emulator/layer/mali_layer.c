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
 *      cl_khr_fp16 only if PoCL can really compile half arithmetic; no bf16 extension and no fp64 is ever
 *      advertised, and a source naming __bf16 or double fails to build as on a Mali; kernels see the profile's
 *      OpenCL version and no fp64 macros; build logs read as the driver's, not PoCL's; a local work size, local
 *      memory or image above the profile's limits fails as on the Mali; SVM is counted like buffers where the
 *      profile's driver offers it and absent where it does not.
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

/* The layer is one translation unit (every function static, one set of globals), kept in parts of one idea
 * each; the order below is the order of definition. The build compiles this file alone. */
#include "config.c"
#include "state.c"
#include "stats.c"
#include "memory_cap.c"
#include "unified_memory.c"
#include "enqueue_error.c"
#include "svm.c"
#include "compiler.c"
#include "identity.c"

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
    HOOK(clCreateProgramWithSource); HOOK(clGetProgramInfo); HOOK(clSVMAlloc); HOOK(clSVMFree);
    HOOK(clEnqueueSVMFree);
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
        if (g_init_state == 1) {
            make_prelude();
            open_live_stats();
        }
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

/*
 * A fake libdcgm.so.4 for go-dcgm v1.4611.2, so that tests run the agent's
 * internal/dcgm through go-dcgm's real cgo path without a GPU or a host
 * engine. See doc.go for the control file and the entry points.
 *
 * go-dcgm binds every C.dcgm* call lazily against the library it dlopened;
 * a call the library does not export kills the process (exit 127), so this
 * file exports every entry point internal/dcgm reaches, plus the few that
 * go-dcgm's connection code probes (dcgmConnect_v3).
 *
 * The library is never unloaded once bound (glibc marks it NODELETE), so
 * dcgmShutdown resets every group; a reconnect starts afresh.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "dcgm_agent.h"
#include "dcgm_structs.h"

#define MAXG 64
#define MAXGPU 16
#define MAXINST 32
#define EXPORT __attribute__((visibility("default")))
typedef dcgmGroupEntityPair_t EP;

static int inited;
static struct { int used, n; EP e[MAXGPU + MAXINST]; } grp[MAXG];
static struct { int used, n, watched; unsigned short f[DCGM_MAX_FIELD_IDS_PER_FIELD_GROUP]; } fgrp[MAXG];

/* The control file ($FAKEDCGM_CONTROL), read on every call: key=value lines. */
typedef struct { char text[16384]; } control;

static void ctl_read(control *c)
{
    c->text[0] = 0;
    const char *path = getenv("FAKEDCGM_CONTROL");
    if (!path || !*path) return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    size_t n = fread(c->text, 1, sizeof c->text - 1, f);
    c->text[n] = 0;
    fclose(f);
}

/* ctl_get copies the value of key (whole line match before '=') into out. */
static int ctl_get(const control *c, const char *key, char *out, size_t outlen)
{
    size_t kn = strlen(key);
    for (const char *line = c->text; *line;) {
        const char *end = strchr(line, '\n');
        size_t ln = end ? (size_t)(end - line) : strlen(line);
        if (ln > kn && strncmp(line, key, kn) == 0 && line[kn] == '=') {
            size_t vn = ln - kn - 1;
            if (vn >= outlen) vn = outlen - 1;
            memcpy(out, line + kn + 1, vn);
            out[vn] = 0;
            return 1;
        }
        if (!end) break;
        line = end + 1;
    }
    return 0;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* inject applies hang.<fn> (milliseconds) and then fail.<fn> or fail.* (a dcgmReturn_t). */
static dcgmReturn_t inject(const char *fn)
{
    control c;
    char key[128], v[64];
    ctl_read(&c);
    snprintf(key, sizeof key, "hang.%s", fn);
    if (ctl_get(&c, key, v, sizeof v)) sleep_ms(atol(v));
    snprintf(key, sizeof key, "fail.%s", fn);
    if (ctl_get(&c, key, v, sizeof v) || ctl_get(&c, "fail.*", v, sizeof v)) return (dcgmReturn_t)atoi(v);
    return DCGM_ST_OK;
}

#define ENTER(fn) do { dcgmReturn_t r_ = inject(fn); if (r_) return r_; if (!inited) return DCGM_ST_UNINITIALIZED; } while (0)

/* gpus fills the UUIDs of the profile's GPUs (gpus=GPU-a,GPU-b; default two fixed ones) and returns their count. */
static int gpus(char uuids[MAXGPU][DCGM_MAX_STR_LENGTH])
{
    control c;
    char v[4096];
    ctl_read(&c);
    if (!ctl_get(&c, "gpus", v, sizeof v))
        strcpy(v, "GPU-00000000-0000-0000-0000-000000000000,GPU-00000000-0000-0000-0000-000000000001");
    int n = 0;
    for (char *s = strtok(v, ","); s && n < MAXGPU; s = strtok(NULL, ",")) {
        snprintf(uuids[n], DCGM_MAX_STR_LENGTH, "%s", s);
        n++;
    }
    return n;
}

static int ngpus(void)
{
    char u[MAXGPU][DCGM_MAX_STR_LENGTH];
    return gpus(u);
}

/*
 * The profile's MIG GPU instances (instances=<gpu>/<gi>,...; none by
 * default). As the real host engine numbers them, a GPU instance's entity
 * ID is its GPU's ID times DCGM_MAX_INSTANCES_PER_GPU plus its place among
 * the GPU's instances, not NVML's GPU instance ID. Each has one compute
 * instance (DCGM_FE_GPU_CI), numbered the same way.
 */
typedef struct { unsigned gpu, gi, eid; } inst;

static int instances(inst out[MAXINST])
{
    control c;
    char v[4096];
    int n = 0, per[MAXGPU] = { 0 };
    ctl_read(&c);
    if (!ctl_get(&c, "instances", v, sizeof v)) return 0;
    for (char *s = strtok(v, ","); s && n < MAXINST; s = strtok(NULL, ",")) {
        unsigned g, i;
        if (sscanf(s, "%u/%u", &g, &i) != 2 || g >= MAXGPU || per[g] == DCGM_MAX_INSTANCES_PER_GPU) continue;
        out[n++] = (inst){ g, i, g * DCGM_MAX_INSTANCES_PER_GPU + per[g]++ };
    }
    return n;
}

/* instance finds the GPU instance of entity eid; -1 if none. */
static int instance(unsigned eid, inst *out)
{
    inst in[MAXINST];
    for (int i = 0, n = instances(in); i < n; i++)
        if (in[i].eid == eid) {
            *out = in[i];
            return 0;
        }
    return -1;
}

/* Texts from NVIDIA/DCGM dcgmlib/src/dcgm_errors.c. */
EXPORT const char *errorString(dcgmReturn_t r)
{
    switch (r) {
    case DCGM_ST_OK: return "Success";
    case DCGM_ST_BADPARAM: return "Bad parameter passed to function";
    case DCGM_ST_GENERIC_ERROR: return "Generic unspecified error";
    case DCGM_ST_NOT_SUPPORTED: return "Feature not supported";
    case DCGM_ST_UNINITIALIZED: return "Object is in an undefined state";
    case DCGM_ST_VER_MISMATCH: return "API version mismatch";
    case DCGM_ST_NOT_WATCHED: return "Field is not being watched";
    case DCGM_ST_CONNECTION_NOT_VALID: return "Host engine connection invalid/disconnected";
    case DCGM_ST_IN_USE: return "The requested operation could not be completed because the affected resource is in use";
    case DCGM_ST_PROFILING_NOT_SUPPORTED: return "Profiling is not supported for this group of GPUs or GPU";
    case DCGM_ST_TIMEOUT: return "A timeout occurred";
    default: return NULL; /* as the real library: go-dcgm then gives an empty message */
    }
}

EXPORT dcgmReturn_t dcgmInit(void)
{
    dcgmReturn_t r = inject("dcgmInit");
    if (!r) inited = 1;
    return r;
}

EXPORT dcgmReturn_t dcgmShutdown(void)
{
    inited = 0;
    memset(grp, 0, sizeof grp);
    memset(fgrp, 0, sizeof fgrp);
    return DCGM_ST_OK;
}

EXPORT dcgmReturn_t dcgmStartEmbedded(dcgmOperationMode_t m, dcgmHandle_t *out)
{
    ENTER("dcgmStartEmbedded");
    if (m != DCGM_OPERATION_MODE_AUTO) return DCGM_ST_BADPARAM;
    *out = 0x4242;
    return DCGM_ST_OK;
}

EXPORT dcgmReturn_t dcgmStopEmbedded(dcgmHandle_t h)
{
    (void)h;
    ENTER("dcgmStopEmbedded");
    return DCGM_ST_OK;
}

EXPORT dcgmReturn_t dcgmConnect_v2(const char *addr, dcgmConnectV2Params_t *p, dcgmHandle_t *out)
{
    ENTER("dcgmConnect_v2");
    if (!addr || !*addr || p->version != dcgmConnectV2Params_version2) return DCGM_ST_BADPARAM;
    *out = 0x4343;
    return DCGM_ST_OK;
}

EXPORT dcgmReturn_t dcgmConnect_v3(const char *cs, dcgmConnectV3Params_t *p, dcgmHandle_t *out)
{
    ENTER("dcgmConnect_v3");
    if (!cs || !*cs || p->version != dcgmConnectV3Params_version1) return DCGM_ST_BADPARAM;
    *out = 0x4444;
    return DCGM_ST_OK;
}

EXPORT dcgmReturn_t dcgmDisconnect(dcgmHandle_t h)
{
    (void)h;
    ENTER("dcgmDisconnect");
    return DCGM_ST_OK;
}

EXPORT dcgmReturn_t dcgmGetAllSupportedDevices(dcgmHandle_t h, unsigned int ids[DCGM_MAX_NUM_DEVICES], int *count)
{
    (void)h;
    ENTER("dcgmGetAllSupportedDevices");
    int n = ngpus();
    for (int i = 0; i < n; i++) ids[i] = i;
    *count = n;
    return DCGM_ST_OK;
}

EXPORT dcgmReturn_t dcgmGetAllDevices(dcgmHandle_t h, unsigned int ids[DCGM_MAX_NUM_DEVICES], int *count)
{
    (void)h;
    ENTER("dcgmGetAllDevices");
    int n = ngpus();
    for (int i = 0; i < n; i++) ids[i] = i;
    *count = n;
    return DCGM_ST_OK;
}

EXPORT dcgmReturn_t dcgmGetGpuInstanceHierarchy(dcgmHandle_t h, dcgmMigHierarchy_v2 *out)
{
    (void)h;
    ENTER("dcgmGetGpuInstanceHierarchy");
    if (out->version != dcgmMigHierarchy_version2) return DCGM_ST_VER_MISMATCH;
    char u[MAXGPU][DCGM_MAX_STR_LENGTH];
    int ng = gpus(u);
    inst in[MAXINST];
    int n = instances(in), k = 0;
    for (int i = 0; i < n; i++) {
        if ((int)in[i].gpu >= ng) continue;
        for (int ci = 0; ci < 2; ci++) { /* the GPU instance, then its compute instance */
            dcgmMigHierarchyInfo_v2 *e = &out->entityList[k++];
            memset(e, 0, sizeof *e);
            e->entity = ci ? (EP){ DCGM_FE_GPU_CI, in[i].eid } : (EP){ DCGM_FE_GPU_I, in[i].eid };
            e->parent = ci ? (EP){ DCGM_FE_GPU_I, in[i].eid } : (EP){ DCGM_FE_GPU, in[i].gpu };
            snprintf(e->info.gpuUuid, sizeof e->info.gpuUuid, "%s", u[in[i].gpu]);
            e->info.nvmlGpuIndex = in[i].gpu;
            e->info.nvmlInstanceId = in[i].gi;
            e->info.nvmlComputeInstanceId = ci ? 0 : (unsigned)-1;
            e->info.nvmlMigProfileId = 19; /* NVML_GPU_INSTANCE_PROFILE_1_SLICE's */
            e->info.nvmlProfileSlices = 1;
        }
    }
    out->count = k;
    return DCGM_ST_OK;
}

EXPORT dcgmReturn_t dcgmGroupCreate(dcgmHandle_t h, dcgmGroupType_t t, const char *name, dcgmGpuGrp_t *id)
{
    (void)h;
    (void)name;
    ENTER("dcgmGroupCreate");
    for (int i = 0; i < MAXG; i++) {
        if (grp[i].used) continue;
        grp[i].used = 1;
        grp[i].n = 0;
        if (t == DCGM_GROUP_DEFAULT)
            for (int g = 0, n = ngpus(); g < n; g++) grp[i].e[grp[i].n++] = (EP){ DCGM_FE_GPU, g };
        *id = i + 1;
        return DCGM_ST_OK;
    }
    return DCGM_ST_MAX_LIMIT;
}

static int gi(dcgmGpuGrp_t g) { return g >= 1 && g <= MAXG && grp[g - 1].used ? (int)g - 1 : -1; }
static int fi(dcgmFieldGrp_t g) { return g >= 1 && g <= MAXG && fgrp[g - 1].used ? (int)g - 1 : -1; }

EXPORT dcgmReturn_t dcgmGroupAddEntity(dcgmHandle_t h, dcgmGpuGrp_t g, dcgm_field_entity_group_t eg, dcgm_field_eid_t e)
{
    (void)h;
    ENTER("dcgmGroupAddEntity");
    int i = gi(g);
    inst in;
    if (i < 0 || grp[i].n == MAXGPU + MAXINST) return DCGM_ST_BADPARAM;
    if ((eg == DCGM_FE_GPU && (int)e >= ngpus()) || (eg == DCGM_FE_GPU_I && instance(e, &in) < 0)) return DCGM_ST_BADPARAM;
    if (eg != DCGM_FE_GPU && eg != DCGM_FE_GPU_I) return DCGM_ST_NOT_SUPPORTED;
    grp[i].e[grp[i].n++] = (EP){ eg, e };
    return DCGM_ST_OK;
}

EXPORT dcgmReturn_t dcgmGroupAddDevice(dcgmHandle_t h, dcgmGpuGrp_t g, unsigned int gpu)
{
    return dcgmGroupAddEntity(h, g, DCGM_FE_GPU, gpu);
}

EXPORT dcgmReturn_t dcgmGroupDestroy(dcgmHandle_t h, dcgmGpuGrp_t g)
{
    (void)h;
    ENTER("dcgmGroupDestroy");
    int i = gi(g);
    if (i < 0) return DCGM_ST_NOT_CONFIGURED;
    grp[i].used = 0;
    return DCGM_ST_OK;
}

EXPORT dcgmReturn_t dcgmFieldGroupCreate(dcgmHandle_t h, int n, const unsigned short *f, const char *name, dcgmFieldGrp_t *id)
{
    (void)h;
    (void)name;
    ENTER("dcgmFieldGroupCreate");
    if (n <= 0 || n > DCGM_MAX_FIELD_IDS_PER_FIELD_GROUP) return DCGM_ST_BADPARAM;
    for (int i = 0; i < MAXG; i++) {
        if (fgrp[i].used) continue;
        fgrp[i].used = 1;
        fgrp[i].n = n;
        fgrp[i].watched = 0;
        memcpy(fgrp[i].f, f, n * sizeof *f);
        *id = i + 1;
        return DCGM_ST_OK;
    }
    return DCGM_ST_MAX_LIMIT;
}

EXPORT dcgmReturn_t dcgmFieldGroupDestroy(dcgmHandle_t h, dcgmFieldGrp_t g)
{
    (void)h;
    ENTER("dcgmFieldGroupDestroy");
    int i = fi(g);
    if (i < 0) return DCGM_ST_NO_DATA;
    fgrp[i].used = 0;
    return DCGM_ST_OK;
}

EXPORT dcgmReturn_t dcgmWatchFields(dcgmHandle_t h, dcgmGpuGrp_t g, dcgmFieldGrp_t f, long long us, double age, int keep)
{
    (void)h;
    (void)age;
    (void)keep;
    ENTER("dcgmWatchFields");
    if (us < 100000 || fi(f) < 0 || (g != DCGM_GROUP_ALL_GPUS && gi(g) < 0)) return DCGM_ST_BADPARAM;
    fgrp[fi(f)].watched = 1;
    return DCGM_ST_OK;
}

EXPORT dcgmReturn_t dcgmUnwatchFields(dcgmHandle_t h, dcgmGpuGrp_t g, dcgmFieldGrp_t f)
{
    (void)h;
    (void)g;
    ENTER("dcgmUnwatchFields");
    if (fi(f) < 0) return DCGM_ST_BADPARAM;
    fgrp[fi(f)].watched = 0;
    return DCGM_ST_OK;
}

EXPORT dcgmReturn_t dcgmUpdateAllFields(dcgmHandle_t h, int wait)
{
    (void)h;
    (void)wait;
    ENTER("dcgmUpdateAllFields");
    return DCGM_ST_OK;
}

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

/*
 * fill answers one field of one entity: for a GPU value.<gpu>.<field>, for a
 * GPU instance value.i<entity>.<field>, else value.<field>, else a default.
 * The profiling ratios (1001-1008) are doubles, the counters (1009-1012)
 * int64; a GPU's UUID (54) a string; others NO_DATA.
 */
static void fill(const control *c, unsigned short id, EP e, long long ts, unsigned short *type, int *st, int64_t *tsout, void *val)
{
    char key[64], v[64];
    double d;
    inst in;
    int gpu = e.entityGroupId == DCGM_FE_GPU ? (int)e.entityId : -1;
    int known = gpu >= 0 ? gpu < ngpus() : e.entityGroupId == DCGM_FE_GPU_I && instance(e.entityId, &in) == 0;
    *tsout = ts;
    *st = DCGM_ST_OK;
    *type = DCGM_FT_INT64;
    if (id == DCGM_FI_DEV_UUID && gpu >= 0) {
        char u[MAXGPU][DCGM_MAX_STR_LENGTH];
        int n = gpus(u);
        *type = DCGM_FT_STRING;
        if (gpu < n) snprintf((char *)val, DCGM_MAX_STR_LENGTH, "%s", u[gpu]);
        else *st = DCGM_ST_NO_DATA;
        return;
    }
    if (id < 1001 || id > 1012 || !known) {
        *st = DCGM_ST_NO_DATA;
        *(int64_t *)val = DCGM_INT64_BLANK;
        return;
    }
    if (gpu >= 0) snprintf(key, sizeof key, "value.%d.%u", gpu, id);
    else snprintf(key, sizeof key, "value.i%u.%u", e.entityId, id);
    if (ctl_get(c, key, v, sizeof v)) d = atof(v);
    else {
        snprintf(key, sizeof key, "value.%u", id);
        if (ctl_get(c, key, v, sizeof v)) d = atof(v);
        else if (gpu >= 0) d = id <= 1008 ? (id - 1000) / 10.0 + gpu / 100.0 : (double)(id * 1000 + gpu);
        else d = id <= 1008 ? (id - 1000) / 10.0 + 0.05 + e.entityId / 1000.0 : (double)(id * 1000 + 500 + e.entityId);
    }
    if (id <= 1008) {
        *type = DCGM_FT_DOUBLE;
        *(double *)val = d;
    } else *(int64_t *)val = (int64_t)d;
}

EXPORT dcgmReturn_t dcgmGetValuesSince_v2(dcgmHandle_t h, dcgmGpuGrp_t g, dcgmFieldGrp_t f, long long since,
                                          long long *next, dcgmFieldValueEntityEnumeration_f cb, void *ud)
{
    (void)h;
    ENTER("dcgmGetValuesSince_v2");
    int F = fi(f), G = gi(g);
    if (F < 0 || (g != DCGM_GROUP_ALL_GPUS && G < 0)) return DCGM_ST_BADPARAM;
    if (!fgrp[F].watched) return DCGM_ST_NOT_WATCHED;
    long long ts = now_us();
    *next = ts + 1;
    if (since > ts) return DCGM_ST_OK;
    control c;
    ctl_read(&c);
    dcgmFieldValue_v1 *v = calloc(fgrp[F].n, sizeof *v);
    if (!v) return DCGM_ST_MEMORY;
    for (int e = 0, ne = G < 0 ? ngpus() : grp[G].n; e < ne; e++) {
        EP ent = G < 0 ? (EP){ DCGM_FE_GPU, e } : grp[G].e[e];
        for (int k = 0; k < fgrp[F].n; k++) {
            v[k].version = dcgmFieldValue_version1;
            v[k].fieldId = fgrp[F].f[k];
            fill(&c, v[k].fieldId, ent, ts, &v[k].fieldType, &v[k].status, &v[k].ts, &v[k].value);
        }
        if (cb(ent.entityGroupId, ent.entityId, v, fgrp[F].n, ud) < 0) break;
    }
    free(v);
    return DCGM_ST_OK;
}

EXPORT dcgmReturn_t dcgmEntitiesGetLatestValues(dcgmHandle_t h, EP ents[], unsigned ne, unsigned short fl[], unsigned nf,
                                                unsigned flags, dcgmFieldValue_v2 out[])
{
    (void)h;
    (void)flags;
    ENTER("dcgmEntitiesGetLatestValues");
    control c;
    ctl_read(&c);
    long long ts = now_us();
    for (unsigned e = 0; e < ne; e++) {
        for (unsigned k = 0; k < nf; k++) {
            dcgmFieldValue_v2 *v = &out[e * nf + k]; /* entity-major */
            v->version = dcgmFieldValue_version2;
            v->entityGroupId = ents[e].entityGroupId;
            v->entityId = ents[e].entityId;
            v->fieldId = fl[k];
            fill(&c, fl[k], ents[e], ts, &v->fieldType, &v->status, &v->ts, &v->value);
        }
    }
    return DCGM_ST_OK;
}

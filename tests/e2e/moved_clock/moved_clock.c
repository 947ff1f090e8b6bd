/*
 * Home Assistant's wall clock moved ahead, nothing else (tests/e2e/stack.py, Stack._ha_clock_env).
 *
 * Home Assistant 2024.3-2025.x draws the Energy dashboard from completed hours only, so the e2e
 * stack runs it with its clock a little before the end of an hour. Preloaded into that one process
 * (LD_PRELOAD), this adds BLUPOW_CLOCK_AHEAD seconds to what the wall-clock calls return:
 * clock_gettime on the real-time clocks, gettimeofday, time and timespec_get. The monotonic clocks,
 * sleeps, timeouts and waits are not touched: Python measures every timeout on the monotonic clock,
 * so they keep working as they are. (libfaketime, tried first, intercepts those too: time.sleep
 * failed under it, and Home Assistant once died under it in a CI run.)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);

static clock_gettime_fn real_clock_gettime;
static time_t ahead;

static void moved_clock_init(void) __attribute__((constructor));

static void moved_clock_init(void) {
    const char *value = getenv("BLUPOW_CLOCK_AHEAD");
    ahead = value ? (time_t)strtoll(value, NULL, 10) : 0;
    real_clock_gettime = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
}

static int is_wall_clock(clockid_t id) {
    return id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE || id == CLOCK_TAI;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    if (real_clock_gettime == NULL) /* called by another library's constructor, before ours */
        moved_clock_init();
    int rc = real_clock_gettime(id, ts);
    if (rc == 0 && is_wall_clock(id))
        ts->tv_sec += ahead;
    return rc;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
    if (tz != NULL) { /* obsolete: glibc reports UTC too */
        struct timezone *zone = tz;
        zone->tz_minuteswest = 0;
        zone->tz_dsttime = 0;
    }
    return 0;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out != NULL)
        *out = ts.tv_sec;
    return ts.tv_sec;
}

int timespec_get(struct timespec *ts, int base) {
    if (base != TIME_UTC)
        return 0;
    return clock_gettime(CLOCK_REALTIME, ts) == 0 ? base : 0;
}

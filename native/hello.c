/*
 * native.hello: the seeds' C program, speaking Conveyor's external-process protocol.
 *
 *   hello --seconds 3 --steps 10
 *
 * Sleeps `seconds` in `steps`, printing one JSON line of progress per step on stdout, then
 * "hello world" (a plain line: the platform logs it) and {"result": …}. Writes hello.txt into
 * $CONVEYOR_OUTPUT_DIR, which becomes the task's artifact. On SIGTERM (cancel, time limit) it stops
 * at the next step boundary and exits 143. Params also arrive as JSON on stdin and in $CONVEYOR_PARAMS;
 * this program takes its two numbers from argv, placed there by the declaration's argv template.
 *
 * Built by `make install` (gcc -O2 -Wall -o native/build/hello native/hello.c).
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t terminated = 0;

static void on_term(int sig) {
    (void)sig;
    terminated = 1;
}

static void sleep_seconds(double seconds) {
    struct timespec ts;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    /* nanosleep returns early with EINTR on SIGTERM: exactly what we want. */
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR && !terminated) {
    }
}

int main(int argc, char **argv) {
    double seconds = 3.0;
    long steps = 10;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--seconds") == 0) {
            seconds = strtod(argv[i + 1], NULL);
        } else if (strcmp(argv[i], "--steps") == 0) {
            steps = strtol(argv[i + 1], NULL, 10);
        }
    }
    if (seconds < 0 || steps < 1) {
        fprintf(stderr, "bad arguments: --seconds must be >= 0 and --steps >= 1\n");
        return 2;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);

    printf("{\"log\": \"native hello: %g s in %ld steps\"}\n", seconds, steps);
    fflush(stdout);
    long done = 0;
    for (long step = 1; step <= steps && !terminated; step++) {
        sleep_seconds(seconds / (double)steps);
        if (terminated) {
            break;
        }
        done = step;
        printf("{\"progress\": %.2f, \"stage\": \"sleep\", \"message\": \"step %ld/%ld\", "
               "\"metrics\": {\"step\": %ld}}\n", 100.0 * (double)step / (double)steps, step, steps, step);
        fflush(stdout); /* stdout is a pipe: without a flush the platform would see nothing until exit */
    }
    if (terminated) {
        fprintf(stderr, "terminated after %ld steps\n", done);
        return 143;
    }

    puts("hello world");
    const char *out_dir = getenv("CONVEYOR_OUTPUT_DIR");
    if (out_dir != NULL) {
        char path[4096];
        snprintf(path, sizeof path, "%s/hello.txt", out_dir);
        FILE *fh = fopen(path, "w");
        if (fh != NULL) {
            fprintf(fh, "hello world from C after %ld steps\n", done);
            fclose(fh);
        }
    }
    printf("{\"result\": {\"greeting\": \"hello world\", \"completed_steps\": %ld, \"language\": \"C\"}}\n", done);
    fflush(stdout);
    return 0;
}

/* The backend bench/demand.sh measures wharf against: a tiny HTTP server that writes, for
 * each request it answers, when its process started (main), when it was ready to accept, when
 * it had the request in hand and when it had answered, on CLOCK_MONOTONIC (the clock the
 * client reads too), so that its own start-up can be taken out of what a client waits.
 *
 *   demand-backend LOG           serve: fd 3 with LISTEN_FDS, else bind 127.0.0.1:$PORT;
 *                                sleep $STARTUP_MS first, send READY=1 to $NOTIFY_SOCKET if
 *                                set (and $NO_READY is not: a server that does not speak
 *                                sd_notify, as most dev servers); GET /exit is answered,
 *                                then the server exits 0.
 *   demand-backend --exec N [MS] fork+exec this program N times: the median ns from before
 *                                fork to the child's main (what any launcher pays), each
 *                                after MS milliseconds of doing nothing (default 0): a start
 *                                after a pause, as a server's start on demand comes, finds
 *                                the CPU's caches cold and its CPU halted, and takes longer.
 *   demand-backend --wake N MS   a process asleep in read(2) is sent a byte N times, each
 *                                after MS milliseconds of doing nothing: the median ns from the
 *                                write to the sleeper back from its read, with the sleeper on
 *                                the writer's CPU, then on another (-1 with one CPU). Each
 *                                hand-off between processes on a request's way (client,
 *                                proxy, supervisor, server) costs one such wake.
 *
 * LOG lines: "req PID MAIN READY REQ RESP" per request and "exit PID T" before exiting.
 * Connections that close without a request (wharf checking that the server accepts on the
 * socket it was handed) are not requests. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
  long long x = *(const long long *)a, y = *(const long long *)b;
  return (x > y) - (x < y);
}

/* The median of the `n` samples in `d`, which it sorts and frees. */
static long long median(long long *d, int n) {
  qsort(d, n, sizeof *d, cmp);
  long long m = d[n / 2];
  free(d);
  return m;
}

static void say(int log, const char *line) {
  if (write(log, line, strlen(line)) < 0) _exit(3);
}

/* Pin the calling process to CPU `cpu`. */
static void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof set, &set);
}

/* --wake: the median ns from a write on CPU 0 to a process asleep in read(2) on CPU
 * `sleeper_cpu` being back from its read, each write after `pause_ms` of doing nothing. */
static long long wake_median(int n, int pause_ms, int sleeper_cpu) {
  int to[2], back[2];
  if (pipe(to) || pipe(back)) exit(1);
  pin(0);
  pid_t pid = fork();
  if (pid == 0) {
    char c;
    close(to[1]);
    close(back[0]);
    pin(sleeper_cpu);
    while (read(to[0], &c, 1) == 1) {
      long long t = now();
      if (write(back[1], &t, sizeof t) != sizeof t) _exit(1);
    }
    _exit(0);
  }
  close(to[0]);
  close(back[1]);
  long long *d = calloc(n, sizeof *d);
  for (int i = 0; i < n; i++) {
    usleep(pause_ms * 1000);
    long long t0 = now(), t1 = 0;
    if (write(to[1], "x", 1) != 1 || read(back[0], &t1, sizeof t1) != sizeof t1) exit(1);
    d[i] = t1 - t0;
  }
  close(to[1]);
  close(back[0]);
  waitpid(pid, 0, 0);
  return median(d, n);
}

int main(int argc, char **argv) {
  long long t_main = now();
  if (argc == 2 && strcmp(argv[1], "--main-time") == 0) {
    /* The child of --exec: its main's time on stdout. */
    printf("%lld\n", t_main);
    return 0;
  }
  if ((argc == 3 || argc == 4) && strcmp(argv[1], "--exec") == 0) {
    int n = atoi(argv[2]);
    int pause_ms = argc == 4 ? atoi(argv[3]) : 0;
    long long *d = calloc(n, sizeof *d);
    for (int i = 0; i < n; i++) {
      int p[2];
      if (pipe(p)) return 1;
      if (pause_ms > 0) usleep(pause_ms * 1000);
      long long t0 = now();
      pid_t pid = fork();
      if (pid == 0) {
        dup2(p[1], 1);
        execl("/proc/self/exe", argv[0], "--main-time", (char *)0);
        _exit(127);
      }
      close(p[1]);
      char buf[64] = {0};
      ssize_t r = read(p[0], buf, sizeof buf - 1);
      close(p[0]);
      waitpid(pid, 0, 0);
      d[i] = r > 0 ? atoll(buf) - t0 : 0;
    }
    printf("%lld\n", median(d, n));
    return 0;
  }
  if (argc == 4 && strcmp(argv[1], "--wake") == 0) {
    int n = atoi(argv[2]), pause_ms = atoi(argv[3]);
    if (n < 1) return 2;
    int other = sysconf(_SC_NPROCESSORS_ONLN) > 1;
    printf("%lld %lld\n", wake_median(n, pause_ms, 0), other ? wake_median(n, pause_ms, 1) : -1);
    return 0;
  }
  if (argc != 2) {
    fprintf(stderr, "usage: demand-backend LOG | --exec N [MS] | --wake N MS\n");
    return 2;
  }
  int log = open(argv[1], O_WRONLY | O_APPEND | O_CREAT, 0600);
  if (log < 0) { perror(argv[1]); return 1; }
  const char *ms = getenv("STARTUP_MS");
  if (ms && atoi(ms) > 0) usleep(atoi(ms) * 1000);
  int lfd;
  const char *fds = getenv("LISTEN_FDS");
  if (fds && atoi(fds) >= 1) {
    lfd = 3;
  } else {
    const char *port = getenv("PORT");
    if (!port) { fprintf(stderr, "neither LISTEN_FDS nor PORT\n"); return 1; }
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(port))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) || listen(lfd, 128)) { perror("bind"); return 1; }
  }
  const char *notify = getenv("NOTIFY_SOCKET");
  if (notify && *notify && !getenv("NO_READY")) {
    int u = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, notify, sizeof a.sun_path - 1);
    if (a.sun_path[0] == '@') a.sun_path[0] = 0;
    sendto(u, "READY=1", 7, 0, (struct sockaddr *)&a, sizeof a);
    close(u);
  }
  long long t_ready = now();
  for (;;) {
    int c = accept(lfd, 0, 0);
    if (c < 0) continue;
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char req[8192];
    size_t got = 0;
    while (got < sizeof req - 1) {
      ssize_t r = read(c, req + got, sizeof req - 1 - got);
      if (r <= 0) break;
      got += r;
      req[got] = 0;
      if (strstr(req, "\r\n\r\n")) break;
    }
    req[got] = 0;
    long long t_req = now();
    if (strncmp(req, "GET ", 4) != 0) { /* wharf's own probe of the socket: no request */
      close(c);
      continue;
    }
    int quit = strncmp(req, "GET /exit", 9) == 0;
    static const char answer[] =
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    if (write(c, answer, sizeof answer - 1) < 0) { /* the client went */ }
    long long t_resp = now();
    char line[200];
    snprintf(line, sizeof line, "req %d %lld %lld %lld %lld\n", getpid(), t_main, t_ready, t_req,
             t_resp);
    say(log, line);
    close(c);
    if (quit) {
      snprintf(line, sizeof line, "exit %d %lld\n", getpid(), now());
      say(log, line);
      return 0;
    }
  }
}

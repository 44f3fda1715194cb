/* The C side of bench/fanout.py's load generator: N connections that only count.
 *
 * Usage: fanout_reader MODE PORT COUNT PREFIX [CHANNEL [IN_FLIGHT]]
 *   MODE  line: send "PREFIX<i>\n" on connect (a name line)
 *         ws: send a WebSocket upgrade for GET /ws, then {"type":"hello","name":"PREFIX<i>"}
 *         redis: send "SUBSCRIBE CHANNEL\r\n"
 * It connects COUNT sockets to 127.0.0.1:PORT (at most IN_FLIGHT, default 64, waiting
 * for the server's first bytes at once), prints "ready OPEN FAILED", then counts, per connection, the bytes received
 * and the occurrences of the marker "~^#!" (also across reads: the marker does not overlap
 * itself). In ws mode every read holding a 0x89 byte (a ping frame, or by chance a byte of a
 * frame header) is answered with an empty pong, which a server accepts even unasked.
 * After each round of events it sleeps 1 ms, so that reads are few and large.
 * Commands on stdin: "r" prints "MARKS BYTES MIN_MARKS OPEN CLOSED HAVE" (HAVE: connections
 * with at least one marker); "q" or EOF exits.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MARK "~^#!"
#define MLEN 4
static int IN_FLIGHT = 64;
#define BUF (256 * 1024)

enum { CONNECTING, WAITING, HEADERS, OPEN, CLOSED };
enum { LINE, WS, REDIS };

struct conn {
    int fd;
    int state;
    uint64_t marks, bytes;
    unsigned char tail[MLEN - 1];
    int tlen;
    char head[4];  /* last bytes of the HTTP response seen so far */
    int hlen;
};

static int mode, port, count;
static const char *prefix, *channel = "";
static struct conn *conns;
static int in_flight, next_conn, open_count, closed_count, failed_count;
static int epfd;
static unsigned char buf[BUF + MLEN];

static void send_all(int fd, const char *data, size_t len) {
    while (len > 0) {  /* tiny writes on an empty socket buffer: they go out at once */
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return;
        }
        data += n;
        len -= (size_t)n;
    }
}

static void send_hello(struct conn *c, int i) {
    char payload[128], frame[160];
    int len = snprintf(payload, sizeof payload, "{\"type\":\"hello\",\"name\":\"%s%d\"}", prefix, i);
    frame[0] = (char)0x81;
    frame[1] = (char)(0x80 | len); /* len < 126; mask key 0: the payload goes as it is */
    memset(frame + 2, 0, 4);
    memcpy(frame + 6, payload, (size_t)len);
    send_all(c->fd, frame, (size_t)len + 6);
}

static void handshake(struct conn *c, int i) {
    char out[512];
    int len;
    if (mode == LINE) {
        len = snprintf(out, sizeof out, "%s%d\n", prefix, i);
    } else if (mode == REDIS) {
        len = snprintf(out, sizeof out, "SUBSCRIBE %s\r\n", channel);
    } else {
        len = snprintf(out, sizeof out,
                       "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n",
                       port);
    }
    send_all(c->fd, out, (size_t)len);
}

static void close_conn(struct conn *c) {
    if (c->state == CLOSED) return;
    if (c->state == CONNECTING || c->state == WAITING || c->state == HEADERS) {
        in_flight--;
        failed_count++;
    } else {
        open_count--;
        closed_count++;
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = CLOSED;
}

static void start_connects(void) {
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    while (in_flight < IN_FLIGHT && next_conn < count) {
        int i = next_conn++;
        struct conn *c = &conns[i];
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (c->fd < 0) {
            c->state = CLOSED;
            failed_count++;
            continue;
        }
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->state = CONNECTING;
        in_flight++;
        struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = (uint32_t)i};
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
            close(c->fd);
            c->state = CLOSED;
            in_flight--;
            failed_count++;
            continue;
        }
        epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    }
}

static uint64_t count_marks(const unsigned char *p, size_t n) {
    uint64_t k = 0;
    const unsigned char *end = p + n;
    while (p < end) {
        const unsigned char *hit = memmem(p, (size_t)(end - p), MARK, MLEN);
        if (hit == NULL) break;
        k++;
        p = hit + MLEN;
    }
    return k;
}

static void on_data(struct conn *c, int i, unsigned char *data, size_t n) {
    c->bytes += n;
    if (c->state == WAITING || c->state == HEADERS) {
        if (c->state == WAITING) in_flight--;
        if (mode == WS) {
            /* the 101 response first: look for its blank line, also across reads */
            c->state = HEADERS;
            for (size_t j = 0; j < n; j++) {
                memmove(c->head, c->head + 1, 3);
                c->head[3] = (char)data[j];
                if (memcmp(c->head, "\r\n\r\n", 4) == 0) {
                    c->state = OPEN;
                    open_count++;
                    send_hello(c, i);
                    data += j + 1;
                    n -= j + 1;
                    break;
                }
            }
            if (c->state != OPEN) return;
        } else {
            c->state = OPEN;
            open_count++;
        }
    }
    if (n == 0) return;
    /* markers cut by the previous read: the tail of it and the start of this one */
    unsigned char seam[2 * MLEN];
    size_t head = n < MLEN - 1 ? n : MLEN - 1;
    memcpy(seam, c->tail, (size_t)c->tlen);
    memcpy(seam + c->tlen, data, head);
    c->marks += count_marks(seam, (size_t)c->tlen + head) + count_marks(data, n);
    if (n >= MLEN - 1) {
        memcpy(c->tail, data + n - (MLEN - 1), MLEN - 1);
        c->tlen = MLEN - 1;
    } else {  /* a very short read: keep the last MLEN - 1 bytes of tail + data */
        unsigned char joined[2 * MLEN];
        size_t total = (size_t)c->tlen + n;
        memcpy(joined, c->tail, (size_t)c->tlen);
        memcpy(joined + c->tlen, data, n);
        size_t keep = total < MLEN - 1 ? total : MLEN - 1;
        memcpy(c->tail, joined + total - keep, keep);
        c->tlen = (int)keep;
    }
    if (mode == WS && memchr(data, 0x89, n) != NULL) {
        static const char pong[6] = {(char)0x8A, (char)0x80, 0, 0, 0, 0};
        send_all(c->fd, pong, sizeof pong);
    }
}

static void report(void) {
    uint64_t marks = 0, bytes = 0, min_marks = UINT64_MAX;
    int have = 0;
    for (int i = 0; i < count; i++) {
        marks += conns[i].marks;
        bytes += conns[i].bytes;
        if (conns[i].state == OPEN && conns[i].marks < min_marks) min_marks = conns[i].marks;
        if (conns[i].marks > 0) have++;
    }
    if (min_marks == UINT64_MAX) min_marks = 0;
    printf("%llu %llu %llu %d %d %d\n", (unsigned long long)marks, (unsigned long long)bytes,
           (unsigned long long)min_marks, open_count, closed_count, have);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s line|ws|redis PORT COUNT PREFIX [CHANNEL]\n", argv[0]);
        return 2;
    }
    mode = strcmp(argv[1], "ws") == 0 ? WS : strcmp(argv[1], "redis") == 0 ? REDIS : LINE;
    port = atoi(argv[2]);
    count = atoi(argv[3]);
    prefix = argv[4];
    if (argc > 5) channel = argv[5];
    if (argc > 6) IN_FLIGHT = atoi(argv[6]);
    alarm(3600); /* whatever happens to the parent */
    conns = calloc((size_t)count, sizeof *conns);
    epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev);
    int ready_said = 0;
    struct epoll_event events[512];
    start_connects();
    for (;;) {
        if (!ready_said && next_conn >= count && in_flight == 0) {
            printf("ready %d %d\n", open_count, failed_count);
            fflush(stdout);
            ready_said = 1;
        }
        int n = epoll_wait(epfd, events, 512, 100);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            return 1;
        }
        for (int e = 0; e < n; e++) {
            uint32_t id = events[e].data.u32;
            if (id == UINT32_MAX) {
                char cmd[256];
                ssize_t got = read(0, cmd, sizeof cmd);
                if (got <= 0) return 0;
                for (ssize_t j = 0; j < got; j++) {
                    if (cmd[j] == 'r') report();
                    if (cmd[j] == 'q') return 0;
                }
                continue;
            }
            struct conn *c = &conns[id];
            if (c->state == CLOSED) continue;
            if (c->state == CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err != 0) {
                    close_conn(c);
                    continue;
                }
                c->state = WAITING;
                struct epoll_event in = {.events = EPOLLIN, .data.u32 = id};
                epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &in);
                handshake(c, (int)id);
                continue;
            }
            ssize_t got = read(c->fd, buf, BUF);
            if (got > 0) {
                on_data(c, (int)id, buf, (size_t)got);
            } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
                close_conn(c);
            }
        }
        start_connects();
        if (n > 0 && ready_said) {
            /* let the data pile up for a millisecond: a read then takes many messages, so
               a server that writes one message at a time does not cost a read per delivery
               (the probes, not these receivers, measure latency) */
            struct timespec pause = {0, 1000000};
            nanosleep(&pause, NULL);
        }
    }
}

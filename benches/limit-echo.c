/* limit-echo: the floor for any server of the Clove frame protocol on this machine.
 * A single-threaded epoll loop that echoes each complete frame (17-byte little-endian header +
 * payload) back unchanged on a Unix socket. It does no parsing, allocation or dispatch, so no real
 * daemon can beat it; measure your server and this probe in the same run and report the ratio.
 *
 *   cc -O2 -o /tmp/limit-echo benches/limit-echo.c && /tmp/limit-echo /tmp/limit.sock &
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAXFD 65536
#define CAP (1 << 21)
static char *buf[MAXFD];
static size_t len[MAXFD];

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: limit-echo SOCKET\n"); return 2; }
    int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_un a = {0};
    a.sun_family = AF_UNIX;
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    unlink(argv[1]);
    if (bind(ls, (void *)&a, sizeof a) || listen(ls, 1024)) { perror("bind/listen"); return 1; }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    struct epoll_event evs[256];
    static char out[1 << 16];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, 0, 0, SOCK_NONBLOCK)) >= 0) {
                    if (c >= MAXFD) { close(c); continue; }
                    buf[c] = malloc(CAP); len[c] = 0;
                    struct epoll_event e = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
                }
                continue;
            }
            ssize_t r = read(fd, buf[fd] + len[fd], CAP - len[fd]);
            if (r <= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, fd, 0); close(fd); free(buf[fd]); continue; }
            len[fd] += (size_t)r;
            size_t off = 0, ol = 0;
            while (len[fd] - off >= 17) {
                uint64_t pl; memcpy(&pl, buf[fd] + off + 9, 8);
                if (len[fd] - off < 17 + pl) break;
                if (ol + 17 + pl > sizeof out) { if (write(fd, out, ol) < 0) break; ol = 0; }
                if (17 + pl > sizeof out) { if (write(fd, buf[fd] + off, 17 + pl) < 0) break; }
                else { memcpy(out + ol, buf[fd] + off, 17 + pl); ol += 17 + pl; }
                off += 17 + pl;
            }
            if (ol && write(fd, out, ol) < 0) { /* peer gone; the next read closes it */ }
            memmove(buf[fd], buf[fd] + off, len[fd] - off);
            len[fd] -= off;
        }
    }
}

// fs_safe.c: link-safe removal and replacement of files (see fs_safe.h).
#include "common/fs_safe.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"

#define MAX_DEPTH 32

static int remove_at(int dfd, const char *name, int depth) {
    struct stat st;
    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode)) return unlinkat(dfd, name, 0) == 0 || errno == ENOENT ? 0 : -1;
    if (depth >= MAX_DEPTH) {
        errno = ELOOP;
        return -1;
    }
    // O_NOFOLLOW: if the entry was swapped for a link since the fstatat, opening fails (ELOOP)
    int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    DIR *d = fdopendir(fd);
    if (!d) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    int rc = 0, err = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (remove_at(dirfd(d), e->d_name, depth + 1) != 0 && !err) err = errno, rc = -1;
    }
    closedir(d);
    if (unlinkat(dfd, name, AT_REMOVEDIR) != 0 && errno != ENOENT && !rc) err = errno, rc = -1;
    if (rc) errno = err;
    return rc;
}

int fs_remove_at(int dirfd, const char *name) {
    if (!name[0] || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, "..")) {
        errno = EINVAL;  // an entry of dirfd, nothing else
        return -1;
    }
    return remove_at(dirfd, name, 0);
}

// splits path into its parent directory (opened) and last component; -1 with errno
static int open_parent(const char *path, char *last, size_t cap) {
    char buf[4096];
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;  // "dir/" names dir
    if (n == 0 || n >= sizeof buf) {
        errno = n ? ENAMETOOLONG : ENOENT;
        return -1;
    }
    memcpy(buf, path, n);
    buf[n] = 0;
    char *slash = strrchr(buf, '/');
    const char *base = slash ? slash + 1 : buf;
    if (strlen(base) >= cap) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(last, base);
    const char *parent = ".";
    if (slash == buf) parent = "/";
    else if (slash) *slash = 0, parent = buf;
    return open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

int fs_remove(const char *path) {
    char last[1024];
    int dfd = open_parent(path, last, sizeof last);
    if (dfd < 0) return errno == ENOENT ? 0 : -1;
    int rc = fs_remove_at(dfd, last);
    int e = errno;
    close(dfd);
    errno = e;
    return rc;
}

int fs_replace(const char *path, const void *data, size_t n) {
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid()) >= (int)sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    unlink(tmp);  // a leftover of this pid (or a link planted there): the entry only
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    const char *p = data;
    size_t left = n;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) goto fail;
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0) goto fail;
    if (close(fd) != 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0) goto fail;
    return 0;
fail:;
    int e = errno ? errno : EIO;
    if (fd >= 0) close(fd);
    unlink(tmp);
    errno = e;
    return -1;
}

// open() that refuses links (O_NOFOLLOW) and anything but a regular file (errno EINVAL); *st is
// the file's status
static int open_regular(const char *path, int flags, struct stat *st) {
    int fd = open(path, flags | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
        close(fd);
        errno = EINVAL;
        return -1;
    }
    return fd;
}

FILE *fs_open_append(const char *path) {
    struct stat st;
    int fd = open_regular(path, O_WRONLY | O_APPEND | O_CREAT, &st);
    if (fd < 0) return NULL;
    FILE *f = fdopen(fd, "a");
    if (!f) close(fd);
    return f;
}

char *fs_read_nofollow(const char *path, size_t max, size_t *len) {
    struct stat st;
    int fd = open_regular(path, O_RDONLY | O_NONBLOCK, &st);  // O_NONBLOCK: a FIFO cannot hang us
    if (fd < 0) return NULL;
    size_t n = (size_t)st.st_size < max ? (size_t)st.st_size : max, got = 0;
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;  // shorter than fstat said: what is there
        got += (size_t)r;
    }
    close(fd);
    buf[got] = 0;
    *len = got;
    return buf;
}

int fs_is_file_nofollow(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0 && S_ISREG(st.st_mode);
}

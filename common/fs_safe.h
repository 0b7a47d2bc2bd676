// fs_safe.h: deleting, truncating and replacing files without ever following a symbolic link.
// svlm deletes and rewrites only what it made (checkpoints, .tmp directories, logs, prepared
// shards); a link planted among them (by a user, a sync tool or an attacker) must never turn that
// into deleting or truncating what the link points at. So the last component of a path is never
// followed, and a directory is emptied entry by entry through openat/unlinkat on descriptors
// opened with O_NOFOLLOW: removal cannot leave the directory it was asked to remove.
#pragma once
#include <stddef.h>
#include <stdio.h>

// Removes the entry name of the directory dirfd: a file or a symbolic link is unlinked (the link,
// never its target); a directory is emptied the same way, depth first (at most 32 levels), then
// removed. 0 when the entry is gone (or was never there), -1 with errno otherwise.
int fs_remove_at(int dirfd, const char *name);
// The same for a path: its parent directories are followed, its last component never.
int fs_remove(const char *path);
// Replaces path by a regular file holding data[0, n): written to "<path>.tmp-<pid>" (created with
// O_EXCL | O_NOFOLLOW, so nothing there is followed or truncated), fsynced, renamed over path.
// A symbolic link at path is replaced as an entry; its target is left as it was. 0, or -1 with
// errno (the temporary file removed).
int fs_replace(const char *path, const void *data, size_t n);
// Opens path for appending (created 0644 when absent). A symbolic link or anything but a regular
// file is refused: NULL with errno ELOOP / EINVAL.
FILE *fs_open_append(const char *path);
// Reads at most max bytes of path into a malloc'd buffer (*len bytes, NUL-terminated) without
// following a link at path and only from a regular file; NULL with errno otherwise.
char *fs_read_nofollow(const char *path, size_t max, size_t *len);
// 1 when path itself (a link is not followed) is a directory / a regular file
int fs_is_dir_nofollow(const char *path);
int fs_is_file_nofollow(const char *path);

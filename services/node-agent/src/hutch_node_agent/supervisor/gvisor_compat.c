/*
 * Preloaded into processes of gVisor sandboxes (LD_PRELOAD), to work around what the gVisor
 * release packaged for these hosts gets wrong.
 *
 * statx(2): that release refuses the AT_NO_AUTOMOUNT flag with EINVAL, and GNU coreutils passes it
 * on every `ls -l` and `stat`. Nothing inside a sandbox is automounted, so dropping the flag
 * changes no answer.
 *
 * Built with -nostdlib and no libc dependency, so that it loads into any image (glibc or musl);
 * __errno_location is resolved from whichever libc the process uses.
 */
#define AT_NO_AUTOMOUNT 0x800
#define SYS_STATX 332

struct statx;
extern int *__errno_location(void);

static long raw_syscall5(long number, long a, long b, long c, long d, long e)
{
    long result;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    __asm__ volatile("syscall"
                     : "=a"(result)
                     : "a"(number), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
                     : "rcx", "r11", "memory");
    return result;
}

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buffer)
{
    long result = raw_syscall5(SYS_STATX, dirfd, (long)path, flags & ~AT_NO_AUTOMOUNT, mask, (long)buffer);
    if (result < 0 && result > -4096) {
        *__errno_location() = (int)-result;
        return -1;
    }
    return (int)result;
}

/* A getaddrinfo() shim for the integration tests: it makes one test host name resolve to a
 * chosen list of numeric addresses, in order, so a test can put a dead address first.
 *
 * Built by test_regressions.py into a temporary folder and loaded with LD_PRELOAD:
 *   POPGATE_TEST_GAI="upstream.test=127.0.0.2,127.0.0.1"  the name and its addresses
 *   POPGATE_TEST_GAI_LOG=FILE                             a line per answered lookup
 * Every other name goes to the real resolver. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SHIM_SPEC_MAX 512

static int real_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                            struct addrinfo **res)
{
    int (*real)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
    *(void **)&real = dlsym(RTLD_NEXT, "getaddrinfo");
    if (real == NULL)
        return EAI_FAIL;
    return real(node, service, hints, res);
}

static void note(const char *node, const char *addrs)
{
    const char *path = getenv("POPGATE_TEST_GAI_LOG");
    if (path == NULL || path[0] == '\0')
        return;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0)
        return;
    ssize_t ignored = write(fd, node, strlen(node));
    ignored = write(fd, " ", 1);
    ignored = write(fd, addrs, strlen(addrs));
    ignored = write(fd, "\n", 1);
    (void)ignored;
    close(fd);
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    const char *spec = getenv("POPGATE_TEST_GAI");
    const char *eq = spec != NULL ? strchr(spec, '=') : NULL;
    if (node == NULL || eq == NULL || strlen(node) != (size_t)(eq - spec) ||
        strncmp(node, spec, (size_t)(eq - spec)) != 0 || strlen(eq + 1) >= SHIM_SPEC_MAX)
        return real_getaddrinfo(node, service, hints, res);

    char list[SHIM_SPEC_MAX];
    strcpy(list, eq + 1);
    struct addrinfo numeric;
    memset(&numeric, 0, sizeof(numeric));
    if (hints != NULL)
        numeric = *hints;
    numeric.ai_flags |= AI_NUMERICHOST;

    /* glibc frees a result node by node, so the lists of several calls can be chained. */
    struct addrinfo *head = NULL, **tail = &head;
    char *save = NULL;
    for (char *addr = strtok_r(list, ",", &save); addr != NULL; addr = strtok_r(NULL, ",", &save)) {
        struct addrinfo *one = NULL;
        int rc = real_getaddrinfo(addr, service, &numeric, &one);
        if (rc != 0) {
            if (head != NULL)
                freeaddrinfo(head);
            return rc;
        }
        *tail = one;
        while (*tail != NULL)
            tail = &(*tail)->ai_next;
    }
    if (head == NULL)
        return EAI_NONAME;
    note(node, eq + 1);
    *res = head;
    return 0;
}

/* libFuzzer target for UIDL templates and legacy UIDL lists: no crash, and every UIDL produced is
 * valid.
 *
 * The first byte picks the mode. Even: a template. Bytes 1..8 are the UID and
 * UIDVALIDITY; the rest is the template, a NUL, and the server id. Odd: the
 * rest is a legacy UIDL list (text or JSON), parsed and merged twice.
 *
 * clang -fsanitize=fuzzer,address,undefined -Imapping tests/fuzz/fuzz_uidl_format.c \
 *     mapping/uidl.c mapping/legacy_import.c -o fuzz_uidl_format
 * ./fuzz_uidl_format tests/fuzz/seeds/uidl_format
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "legacy_import.h"
#include "uidl.h"

/* A template longer than this cannot pass the check anyway (70 characters of output). */
#define FUZZ_TEMPLATE_MAX 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_template(const uint8_t *data, size_t size)
{
    char tmpl[FUZZ_TEMPLATE_MAX + 1], guid[FUZZ_TEMPLATE_MAX + 1], out[UIDL_MAX + 1];
    uint32_t uid, uv;
    const char *error = NULL;
    size_t tlen, glen, n;

    if (size < 8)
        return;
    memcpy(&uid, data, 4);
    memcpy(&uv, data + 4, 4);
    data += 8;
    size -= 8;
    for (tlen = 0; tlen < size && tlen < FUZZ_TEMPLATE_MAX && data[tlen] != 0; tlen++)
        tmpl[tlen] = (char)data[tlen];
    tmpl[tlen] = '\0';
    data += tlen;
    size -= tlen;
    if (size > 0) {
        data++;
        size--;
    }
    for (glen = 0; glen < size && glen < FUZZ_TEMPLATE_MAX && data[glen] != 0; glen++)
        guid[glen] = (char)data[glen];
    guid[glen] = '\0';

    int ok = uidl_template_check(tmpl, &error);
    if (ok < 0 && (error == NULL || *error == '\0'))
        abort();
    (void)uidl_template_uses_guid(tmpl);
    n = uidl_template_format(tmpl, uid, uv, glen > 0 ? guid : NULL, out);
    if (n != strlen(out))
        abort();
    if (n > 0 && (ok < 0 || !uidl_is_valid(out, n)))
        abort();
    /* A template without %g never depends on the server id. */
    if (ok == 0 && !uidl_template_uses_guid(tmpl)) {
        char again[UIDL_MAX + 1];
        if (uidl_template_format(tmpl, uid, uv, NULL, again) != n || strcmp(again, out) != 0)
            abort();
    }

    /* The default template is uidl_default(). */
    char a[UIDL_MAX + 1], b[UIDL_MAX + 1];
    if (uidl_default(a, uid, uv) != uidl_template_format(UIDL_TEMPLATE_DEFAULT, uid, uv, NULL, b) ||
        strcmp(a, b) != 0)
        abort();

    /* Message-ID hashes ignore the whitespace around the value. */
    char padded[FUZZ_TEMPLATE_MAX + 3];
    padded[0] = ' ';
    memcpy(padded + 1, guid, glen);
    padded[glen + 1] = '\n';
    if (uidl_msgid_hash(padded, glen + 2) != uidl_msgid_hash(guid, glen))
        abort();
}

static void fuzz_legacy(const uint8_t *data, size_t size)
{
    struct legacy_import *list = NULL;
    struct state_doc doc = {0};
    const char *error = NULL;
    size_t line = 0;

    if (legacy_import_parse((const char *)data, size, LEGACY_IMPORT_AUTO, &list, &error, &line) <
        0) {
        if (list != NULL || error == NULL)
            abort();
        return;
    }
    for (size_t i = 0; i < list->nentries; i++) {
        const char *u = list->entries[i].uidl;
        if (!uidl_is_valid(u, strlen(u)) || list->entries[i].matched)
            abort();
    }
    /* Merging twice, with a match in between, keeps the match and changes nothing else. */
    if (legacy_import_merge(&doc, list, NULL, &error) < 0)
        abort();
    if (doc.nlegacy != list->nentries)
        abort();
    if (doc.nlegacy > 0)
        doc.legacy[doc.nlegacy / 2].matched = true;
    struct state_legacy *first = malloc((doc.nlegacy + 1) * sizeof(*first));
    if (first == NULL)
        abort();
    memcpy(first, doc.legacy, doc.nlegacy * sizeof(*first));
    size_t nfirst = doc.nlegacy;
    if (legacy_import_merge(&doc, list, NULL, &error) < 0)
        abort();
    if (doc.nlegacy != nfirst)
        abort();
    for (size_t i = 0; i < nfirst; i++) {
        const struct state_legacy *x = &first[i], *y = &doc.legacy[i];
        if (strcmp(x->uidl, y->uidl) != 0 || x->size != y->size || x->msgid_hash != y->msgid_hash ||
            x->matched != y->matched)
            abort();
    }
    free(first);
    free(doc.legacy);
    legacy_import_free(&list);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (data[0] & 1)
        fuzz_legacy(data + 1, size - 1);
    else
        fuzz_template(data + 1, size - 1);
    return 0;
}

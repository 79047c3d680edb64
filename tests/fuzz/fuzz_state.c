/* libFuzzer target for state documents: the fast parse and the reference (whole-tree) parse
 * agree on every input; whatever parses serializes, parses back to the same document, and
 * serializes to the same bytes again. state.c is included to reach both parses.
 *
 *   clang -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -g -O1 \
 *       -fsanitize=fuzzer,address,undefined -Imapping tests/fuzz/fuzz_state.c \
 *       [mapping/state.c] $(pkg-config --cflags --libs jansson) -o fuzz_state
 *   ./fuzz_state -max_total_time=120 tests/fuzz/seeds/state
 */
/* A private copy of state.c (its statics included), renamed so that it links beside
 * mapping/state.c when the build recipe adds that too. */
#define state_doc_new       fuzz_copy_state_doc_new
#define state_doc_free      fuzz_copy_state_doc_free
#define state_doc_parse     fuzz_copy_state_doc_parse
#define state_doc_serialize fuzz_copy_state_doc_serialize
#define state_doc_folder    fuzz_copy_state_doc_folder
#define state_doc_find      fuzz_copy_state_doc_find
#define state_doc_upsert    fuzz_copy_state_doc_upsert
#define state_doc_prune     fuzz_copy_state_doc_prune
#include "../../mapping/state.c"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_equal(const struct state_doc *a, const struct state_doc *b)
{
    if (a->version != b->version || strcmp(a->user, b->user) != 0 ||
        a->first_login != b->first_login || a->last_login != b->last_login ||
        a->nfolders != b->nfolders || a->nmsgs != b->nmsgs || a->nlegacy != b->nlegacy)
        abort();
    for (size_t i = 0; i < a->nfolders; i++)
        if (strcmp(a->folders[i].name, b->folders[i].name) != 0 ||
            a->folders[i].uidvalidity != b->folders[i].uidvalidity)
            abort();
    for (size_t i = 0; i < a->nmsgs; i++) {
        const struct state_msg *x = &a->msgs[i], *y = &b->msgs[i];

        if (x->folder != y->folder || x->uid != y->uid || strcmp(x->uidl, y->uidl) != 0 ||
            x->size != y->size || x->real_size != y->real_size || x->msgid_hash != y->msgid_hash ||
            x->hidden != y->hidden)
            abort();
        /* Sorted by (folder, uid), no duplicates, and every lookup finds its entry. */
        if (i > 0 &&
            (x[-1].folder > x->folder || (x[-1].folder == x->folder && x[-1].uid >= x->uid)))
            abort();
        if (state_doc_find((struct state_doc *)a, x->folder, x->uid) != x)
            abort();
    }
    for (size_t i = 0; i < a->nlegacy; i++) {
        const struct state_legacy *x = &a->legacy[i], *y = &b->legacy[i];

        if (strcmp(x->uidl, y->uidl) != 0 || x->size != y->size || x->msgid_hash != y->msgid_hash ||
            x->matched != y->matched)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct state_doc *doc = NULL, *back = NULL;
    const char *error = NULL;
    size_t len, len2;
    char *json, *json2;

    /* The fast parse either gives up or says exactly what the reference parse says. */
    struct state_doc *ref = NULL, *fast = NULL;
    const char *ref_error = NULL, *fast_error = NULL;
    char ref_text[PARSE_ERROR_MAX];
    int ref_rc = parse_tree((const char *)data, size, &ref, &ref_error);
    enum fast_result fr;

    if (ref_rc != 0)
        snprintf(ref_text, sizeof(ref_text), "%s", ref_error);
    fr = parse_fast((const char *)data, size, &fast, &fast_error);
    if (fr == FAST_OK && (ref_rc != 0 || fast == NULL))
        abort();
    if (fr == FAST_OK)
        check_equal(ref, fast);
    if (fr == FAST_ERROR && (ref_rc == 0 || fast != NULL || strcmp(fast_error, ref_text) != 0))
        abort();
    state_doc_free(&ref);
    state_doc_free(&fast);

    if (state_doc_parse((const char *)data, size, &doc, &error) != 0) {
        /* A refusal is one line of printable ASCII, fit for a log line. */
        if (doc != NULL || error == NULL || error[0] == '\0')
            abort();
        for (const char *p = error; *p != '\0'; p++)
            if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
                abort();
        return 0;
    }
    json = state_doc_serialize(doc, &len);
    if (json == NULL || strlen(json) != len)
        abort();
    /* Our own output never needs the slow parse. */
    if (parse_fast(json, len, &fast, &fast_error) != FAST_OK)
        abort();
    state_doc_free(&fast);
    if (state_doc_parse(json, len, &back, &error) != 0)
        abort();
    check_equal(doc, back);
    json2 = state_doc_serialize(back, &len2);
    if (json2 == NULL || len2 != len || memcmp(json, json2, len) != 0)
        abort();

    /* Editing keeps the invariants: prune everything of folder 0 but the odd UIDs. */
    if (doc->nfolders > 0) {
        uint32_t keep[64];
        size_t n = 0;

        for (size_t i = 0; i < doc->nmsgs && n < 64; i++)
            if (doc->msgs[i].folder == 0 && doc->msgs[i].uid % 2 == 1)
                keep[n++] = doc->msgs[i].uid;
        state_doc_prune(doc, 0, keep, n);
        if (state_doc_upsert(doc, 0, 2) == NULL)
            abort();
        free(json);
        json = state_doc_serialize(doc, &len);
        if (json == NULL)
            abort();
    }
    free(json);
    free(json2);
    state_doc_free(&doc);
    state_doc_free(&back);
    return 0;
}

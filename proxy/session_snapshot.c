/* The session's snapshot from the server's and the state's view: UIDLs, hidden messages, sizes. */
#include <stdlib.h>
#include <string.h>

#include "session_int.h"
#include "state.h"
#include "uidl_assign.h"

/* The state's index of every maildrop folder, added to doc where new; -1 when out of memory. */
static int state_folders(struct session *s, struct state_doc *doc, uint16_t *idx)
{
    for (size_t f = 0; f < maildrop_folder_count(s->md); f++) {
        int k = state_doc_folder(doc, maildrop_folder_name(s->md, f));
        if (k < 0)
            return -1;
        idx[f] = (uint16_t)k;
    }
    return 0;
}

int session_snapshot_apply(struct session *s, struct state_doc *doc, bool *changed_r,
                           const char **error_r)
{
    const uint32_t n = maildrop_count(s->md);
    const size_t nf = maildrop_folder_count(s->md);
    struct uidl_assign_msg *msgs = calloc(n ? n : 1, sizeof(*msgs));
    /* uidl_assign writes every entry: no need to clear 71 bytes a message first. */
    char(*uidls)[UIDL_MAX + 1] = malloc((n ? n : 1) * sizeof(*uidls));
    bool *hidden = calloc(n ? n : 1, sizeof(*hidden));
    uint32_t *uids = calloc(n ? n : 1, sizeof(*uids));
    struct uidl_assign_folder *af = calloc(nf ? nf : 1, sizeof(*af));
    uint16_t *sf = calloc(nf ? nf : 1, sizeof(*sf));
    struct maildrop *md = maildrop_new();
    int rc = -1;
    *error_r = "out of memory";
    if (msgs == NULL || uidls == NULL || hidden == NULL || uids == NULL || af == NULL ||
        sf == NULL || md == NULL || state_folders(s, doc, sf) < 0)
        goto out;
    for (uint32_t i = 0; i < n; i++) {
        const struct maildrop_msg *m = NULL;
        (void)maildrop_get(s->md, i + 1, &m);
        msgs[i].uid = m->uid;
        msgs[i].size = m->size;
        msgs[i].msgid_hash = s->msgid_hashes != NULL ? s->msgid_hashes[i] : 0;
        msgs[i].x_uidl = s->xuidls != NULL ? s->xuidls[i] : NULL;
        msgs[i].guid = maildrop_guid(s->md, i + 1);
        uids[i] = m->uid;
    }
    for (size_t f = 0; f < nf; f++) {
        uint32_t first = 0;
        uint32_t count = maildrop_folder_range(s->md, f, &first);
        af[f] = (struct uidl_assign_folder){
            .folder = sf[f],
            .uidvalidity = maildrop_folder_uidvalidity(s->md, f),
            .msgs = msgs + first - 1,
            .nmsgs = count,
        };
    }
    const struct uidl_assign_config cfg = {.tmpl = s->mapping->uidl_format,
                                           .reuse_xuidl = s->mapping->reuse_xuidl};
    struct uidl_assign_stats stats;
    if (uidl_assign(doc, af, nf, &cfg, uidls, hidden, &stats, error_r) < 0)
        goto out;
    /* Messages gone from the server leave the state. */
    size_t before = doc->nmsgs;
    for (size_t f = 0; f < nf; f++)
        state_doc_prune(doc, sf[f], uids + (af[f].msgs - msgs), af[f].nmsgs);
    /* Only UIDLs kept as recorded and nothing pruned: the document is as it was. */
    *changed_r =
        doc->nmsgs != before || stats.kept != n || stats.rewritten || doc->first_login == 0;
    /* window "since_first_login": what the mailbox held at the first POP3 login stays for
     * IMAP only ("POP for mail from now on"). */
    if (s->mapping->window_since_first_login && doc->first_login == 0) {
        for (uint32_t i = 0; i < n; i++) {
            const struct maildrop_msg *m = NULL;
            (void)maildrop_get(s->md, i + 1, &m);
            struct state_msg *sm = state_doc_find(doc, sf[m->folder], msgs[i].uid);
            if (sm != NULL)
                sm->hidden = true;
            hidden[i] = true;
        }
    }

    /* The new snapshot: visible messages, with the sizes clients actually received. */
    size_t arena_len = 0;
    for (size_t f = 0; f < nf; f++) {
        if (maildrop_add_folder(md, maildrop_folder_name(s->md, f),
                                maildrop_folder_uidvalidity(s->md, f)) < 0)
            goto out;
        size_t base = (size_t)(af[f].msgs - msgs);
        for (size_t i = base; i < base + af[f].nmsgs; i++) {
            if (hidden[i])
                continue;
            const struct state_msg *sm = state_doc_find(doc, sf[f], msgs[i].uid);
            uint64_t size = sm != NULL && sm->real_size != 0 ? sm->real_size : msgs[i].size;
            if (maildrop_add(md, msgs[i].uid, size) < 0)
                goto out;
            arena_len += strlen(uidls[i]) + 1;
        }
    }
    maildrop_seal(md);
    /* UIDLs by message number, in one block: a big mailbox costs ~20 bytes a message. */
    char *arena = malloc(arena_len ? arena_len : 1);
    uint32_t *offsets = calloc(maildrop_count(md) + 1, sizeof(*offsets));
    if (arena == NULL || offsets == NULL) {
        free(arena);
        free(offsets);
        goto out;
    }
    size_t pos = 0, k = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (hidden[i])
            continue;
        size_t len = strlen(uidls[i]) + 1;
        memcpy(arena + pos, uidls[i], len);
        offsets[k++] = (uint32_t)pos;
        pos += len;
    }
    free(s->uidl_arena);
    free(s->uidl_offsets);
    s->uidl_arena = arena;
    s->uidl_offsets = offsets;
    maildrop_free(&s->md);
    s->md = md;
    md = NULL;
    session_log(s,
                "event=uidls kept=%zu reassociated=%zu legacy=%zu generated=%zu suffixed=%zu "
                "hidden=%u uidl_hash=%016llx",
                stats.kept, stats.reassociated, stats.legacy, stats.generated, stats.suffixed,
                n - maildrop_count(s->md),
                (unsigned long long)uidl_assign_list_hash(uidls, hidden, n));
    rc = 0;
out:
    maildrop_free(&md);
    free(msgs);
    free(uidls);
    free(hidden);
    free(uids);
    free(af);
    free(sf);
    return rc;
}

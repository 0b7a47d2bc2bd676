// gen_prefill.c: the one prefill of generation (see generate.h): prompts with their image slots
// expanded, their positions packed into row blocks, the tower run over the tiles of as many
// prompts as the Vlm holds at once, each tile's feature rows placed over its positions, each
// block through the decoder. Generator (one prompt, every logit on demand) and GenBatch (many
// prompts, the last logit of each) differ only in what they do with a block's rows.
#include "model/generate.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"

int gen_prompt_validate(const Vlm *m, int max_len, const GenPrompt *p) {
    const int nt = m->n_img_tokens, V = m->llm.cfg.vocab;
    if (p->n < 1) fatal("empty prompt: no token and no image");
    if (p->n > max_len)
        fatal("prompt of %d positions (image slots included) does not fit the generation cache of %d positions", p->n, max_len);
    if (p->n_tiles > m->max_images) fatal("prompt with %d image tiles: the model was loaded for %d", p->n_tiles, m->max_images);
    CHECK(p->n_tiles == 0 || p->pixels, "gen_prompt_validate: %d tiles without pixels", p->n_tiles);
    for (int t = 0; t < p->n_tiles; t++)
        if (p->tile_start[t] < 0 || p->tile_start[t] + nt > p->n)
            fatal("image tile %d at position %d is outside the %d-position prompt", t, p->tile_start[t], p->n);
    for (int i = 0; i < p->n; i++)
        if (p->ids[i] < 0 || p->ids[i] >= V) fatal("token id %d at prompt position %d is outside the vocabulary (%d)", p->ids[i], i, V);
    return p->n;
}

int *gen_prompt_one_image(const Vlm *m, const int *ids, int n_ids, const float *pixels, int image_pos, GenPrompt *p) {
    const int nt = pixels ? m->n_img_tokens : 0;
    int *buf = xmalloc(((size_t)n_ids + nt + 1) * sizeof(int));
    int pos = pixels ? image_pos : n_ids;
    CHECK(pos >= 0 && pos <= n_ids, "gen_prompt_one_image: image at %d of %d tokens", pos, n_ids);
    memcpy(buf, ids, (size_t)pos * sizeof(int));
    for (int i = 0; i < nt; i++) buf[pos + i] = 0;  // replaced by the features: the model never looks them up
    memcpy(buf + pos + nt, ids + pos, (size_t)(n_ids - pos) * sizeof(int));
    buf[n_ids + nt] = pos;
    *p = (GenPrompt){.ids = buf, .n = n_ids + nt, .pixels = pixels, .n_tiles = pixels ? 1 : 0, .tile_start = buf + n_ids + nt};
    return buf;
}

// The features of the tiles of prompts first.. (as many whole prompts as m->max_images holds,
// at least first) into m->img_emb, tile after tile; feat0[i] each one's first tile there.
// Returns one past the last prompt done; t_image[i] += its tiles' share of the tower's time.
static int features(Vlm *m, const GenPrompt *p, int n, int first, int *feat0, double *t_image) {
    const Kernels *k = m->k;
    const int S = m->vit.cfg.image_size;
    const size_t px = (size_t)3 * S * S;
    int end = first, tiles = 0;
    while (end < n && (end == first || tiles + p[end].n_tiles <= m->max_images)) {
        feat0[end] = tiles;
        if (p[end].n_tiles) k->upload_act(act_at(k, m->pixels, (size_t)tiles * px), p[end].pixels, (size_t)p[end].n_tiles * px);
        tiles += p[end].n_tiles;
        end++;
    }
    double t0 = time_now();
    if (tiles) {
        vit_forward(&m->vit, m->feats, m->pixels, tiles);
        connector_forward(&m->conn, m->img_emb, m->feats, tiles);
        k->synchronize();
    }
    double dt = time_now() - t0;
    for (int i = first; i < end && t_image && tiles; i++) t_image[i] += dt * p[i].n_tiles / tiles;
    return end;
}

void gen_prefill_run(const GenRows *r, const GenPrompt *p, int n, GenBlockFn done, void *ctx, double *t_image) {
    Vlm *m = r->m;
    const Kernels *k = m->k;
    const int C = m->llm.cfg.hidden, V = m->llm.cfg.vocab, nt = m->n_img_tokens;
    const size_t ab = k->act_bytes;
    int *feat0 = xmalloc((size_t)n * sizeof(int));
    int conv = 0, pos = 0, feat_end = 0;  // next position to place; prompts [.., feat_end) have features
    int feat_first = 0;                   // the first prompt whose features m->img_emb holds
    while (conv < n) {
        double t0 = time_now(), t_img = 0;
        int rows = 0, ns = 0;
        while (conv < n && rows < r->cap) {
            const GenPrompt *c = &p[conv];
            int take = c->n - pos < r->cap - rows ? c->n - pos : r->cap - rows;
            r->spans[ns++] = (LlmSpan){.slot = conv, .start = pos, .n = take};
            memcpy(r->h_ids + rows, c->ids + pos, (size_t)take * sizeof(int));
            for (int j = 0; j < take; j++) r->h_pos[rows + j] = pos + j;
            rows += take;
            pos += take;
            if (pos == c->n) conv++, pos = 0;
        }
        k->upload(r->ids, r->h_ids, (size_t)rows * sizeof(int));
        k->embedding_forward(r->rows->x, r->ids, m->llm.embed, rows, C, V);
        int row = 0;
        for (int s = 0; s < ns; s++) {  // each span's tile rows, over the embeddings
            const LlmSpan *sp = &r->spans[s];
            const GenPrompt *c = &p[sp->slot];
            for (int t = 0; t < c->n_tiles; t++) {
                int lo = c->tile_start[t] > sp->start ? c->tile_start[t] : sp->start;
                int hi = c->tile_start[t] + nt < sp->start + sp->n ? c->tile_start[t] + nt : sp->start + sp->n;
                if (lo >= hi) continue;
                if (sp->slot < feat_first || sp->slot >= feat_end) {  // spans come in prompt order
                    double ti = time_now();
                    feat_first = sp->slot;
                    feat_end = features(m, p, n, sp->slot, feat0, t_image);
                    t_img += time_now() - ti;
                }
                k->copy(act_at(k, r->rows->x, (size_t)(row + lo - sp->start) * C),
                        act_at(k, m->img_emb, ((size_t)(feat0[sp->slot] + t) * nt + (size_t)(lo - c->tile_start[t])) * C),
                        (size_t)(hi - lo) * C * ab);
            }
            row += sp->n;
        }
        k->upload(r->pos, r->h_pos, (size_t)rows * sizeof(int));
        llm_forward_cached(&m->llm, r->rows, r->cache, r->spans, ns, r->pos);
        done(ctx, r->spans, ns, rows, t0, t_img);
    }
    free(feat0);
}

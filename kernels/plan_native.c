/* The host planner's array work in C: the same plan as kernels/work_list.py's numpy path, bit for
 * bit (tests/kernels/test_plan_native.py compares them on random forests), in a few calls
 * instead of a few hundred numpy calls.  planner.py explains the why of every step; this file
 * only mirrors it.  Loaded through ctypes by kernels/native.py (no Python headers needed).
 *
 * All arrays are int64 and contiguous; the caller sizes every output.
 *
 *   parent      [N]    -1 for a root, parent < child          indptr  [N+1]
 *   query_node  [B]                                            kv_indices [total]
 *   query_order [B]    sorted position -> query id             query_begin, query_end [N]
 *   segments    4 x [cap]  node, q_begin, q_count, chunk_len   (one per group or row group)
 *   items       5 x [I]    kv_begin, kv_len, q_begin, q_count, slot_base (final order)
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plan_native.h"

/* --------------------------------------------------------------------------- short tails */

static void copy_slots(void *to, i64 to_at, const void *from, i64 from_at, i64 count, i64 bytes)
{
    memcpy((char *)to + to_at * bytes, (const char *)from + from_at * bytes, count * bytes);
}

/* Finds every leaf of 1..max_tokens tokens that one query sits on (the slots are not copied):
 * writes tail_indptr [B+1] (by query), tail_queries (the queries with a tail, info[1] of them),
 * info[0] (the longest tail) and, when some tail is found, new_indptr [N+1] (those nodes
 * emptied).  Returns the number of tail tokens, or -1 when out of memory. */
i64 deft_find_short_tails(i64 n, i64 b, i64 max_tokens, const i64 *parent, const i64 *indptr,
                          const i64 *query_node, i64 *new_indptr, i64 *tail_indptr,
                          i64 *tail_queries, i64 *info)
{
    i64 *queries_at = calloc(n > 0 ? n : 1, sizeof(i64));  /* -1 once a node has a child */
    if (!queries_at) return -1;
    for (i64 q = 0; q < b; q++) queries_at[query_node[q]]++;
    for (i64 i = 0; i < n; i++)
        if (parent[i] >= 0) queries_at[parent[i]] = -1;
    for (i64 i = 0; i < n; i++) {  /* 1 marks a short tail, 0 anything else */
        i64 tokens = indptr[i + 1] - indptr[i];
        queries_at[i] = queries_at[i] == 1 && tokens > 0 && tokens <= max_tokens;
    }
    tail_indptr[0] = 0;
    info[0] = info[1] = 0;
    for (i64 q = 0; q < b; q++) {
        i64 node = query_node[q];
        i64 length = queries_at[node] ? indptr[node + 1] - indptr[node] : 0;
        tail_indptr[q + 1] = tail_indptr[q] + length;
        info[0] = length > info[0] ? length : info[0];
        if (length) tail_queries[info[1]++] = q;
    }
    i64 taken = tail_indptr[b];
    if (taken > 0) {
        new_indptr[0] = 0;
        for (i64 i = 0; i < n; i++)
            new_indptr[i + 1] = new_indptr[i] + (queries_at[i] ? 0 : indptr[i + 1] - indptr[i]);
    }
    free(queries_at);
    return taken;
}

/* kernels/short_tails.py's take_short_tails on a host slot list of index_bytes-byte integers:
 * deft_find_short_tails, then the slots copied to kept [total] and tails [total] (in
 * kv_indices' type).  Returns the number of tail tokens (0: none qualifies, and the outputs
 * are unfinished), or -1 when out of memory. */
i64 deft_short_tails(i64 n, i64 b, i64 max_tokens, i64 index_bytes, const i64 *parent,
                     const i64 *indptr, const void *kv_indices, const i64 *query_node,
                     i64 *new_indptr, i64 *tail_indptr, void *kept, void *tails,
                     i64 *tail_queries, i64 *info)
{
    i64 taken = deft_find_short_tails(n, b, max_tokens, parent, indptr, query_node, new_indptr,
                                      tail_indptr, tail_queries, info);
    if (taken <= 0) return taken;
    for (i64 i = 0; i < n; i++)
        copy_slots(kept, new_indptr[i], kv_indices, indptr[i], new_indptr[i + 1] - new_indptr[i],
                   index_bytes);
    for (i64 q = 0; q < b; q++)
        copy_slots(tails, tail_indptr[q], kv_indices, indptr[query_node[q]],
                   tail_indptr[q + 1] - tail_indptr[q], index_bytes);
    return taken;
}

/* ---------------------------------------------------------------------------- validation */

/* 0 when the forest satisfies the kernel contract, else the number of the first failed check
 * (the caller re-runs the numpy validation to name the offending value).  kv_indices holds
 * index_bytes-byte integers (4 or 8): the slot list is only checked, never widened. */
i64 deft_validate(i64 n, i64 b, i64 total, i64 num_slots, i64 index_bytes, const i64 *parent,
                  const i64 *indptr, const void *kv_indices, const i64 *query_node)
{
    for (i64 i = 0; i < n; i++)
        if (parent[i] >= i || parent[i] < -1) return 1;
    if (indptr[0] != 0) return 2;
    for (i64 i = 0; i < n; i++)
        if (indptr[i + 1] < indptr[i]) return 2;
    if (indptr[n] != total) return 3;
    for (i64 q = 0; q < b; q++)
        if (query_node[q] < 0 || query_node[q] >= n) return 4;
    if (num_slots < 0 || total == 0) return 0;
    /* One unsigned compare per slot flags both a negative and a too large one; no early exit,
     * so the loops vectorize (min and max took three times as long with SSE2). */
    int bad = 0;
    if (index_bytes == 4) {
        const uint32_t *slots = kv_indices;
        uint32_t limit = num_slots < ((i64)1 << 31) ? (uint32_t)num_slots : (uint32_t)1 << 31;
        for (i64 t = 0; t < total; t++) bad |= slots[t] >= limit;
    } else {
        const uint64_t *slots = kv_indices;
        for (i64 t = 0; t < total; t++) bad |= slots[t] >= (uint64_t)num_slots;
    }
    return bad ? 5 : 0;
}

/* ---------------------------------------------------------------------------- grouping */

/* Queries sorted by their root-first path: a preorder walk with children in id order and a
 * node's own queries (in id order) before its children's, which is what a stable lexicographic
 * sort of the -1-padded paths gives.  Nodes no query passes get the empty range [0, 0).
 * out: query_order [B], query_begin [N], query_end [N].  Returns 0, or -1 out of memory. */
i64 deft_layout(i64 n, i64 b, const i64 *parent, const i64 *query_node, i64 *out)
{
    i64 *query_order = out, *query_begin = out + b, *query_end = out + b + n;
    i64 *scratch = malloc(sizeof(i64) * (3 * n + 1));
    if (!scratch) return -1;
    i64 *own = scratch, *below = scratch + n, *next = scratch + 2 * n;
    memset(own, 0, sizeof(i64) * n);
    for (i64 q = 0; q < b; q++) own[query_node[q]]++;
    memcpy(below, own, sizeof(i64) * n);
    for (i64 i = n - 1; i >= 0; i--)  /* parent < child: children are summed first */
        if (parent[i] >= 0) below[parent[i]] += below[i];
    i64 next_root = 0;
    for (i64 i = 0; i < n; i++) {  /* parents before children, siblings in id order */
        i64 begin;
        if (parent[i] < 0) { begin = next_root; next_root += below[i]; }
        else { begin = next[parent[i]]; next[parent[i]] += below[i]; }
        query_begin[i] = begin;
        next[i] = begin + own[i];  /* the node's own queries first */
    }
    for (i64 i = 0; i < n; i++) next[i] = query_begin[i];
    for (i64 q = 0; q < b; q++) query_order[next[query_node[q]]++] = q;
    for (i64 i = 0; i < n; i++) {
        if (below[i] == 0) query_begin[i] = 0;
        query_end[i] = query_begin[i] + below[i];
    }
    free(scratch);
    return 0;
}

/* ---------------------------------------------------------------------------- splitting */

/* 64-bit division costs up to ~90 cycles on older x86 cores, 32-bit about a third: tree
 * sizes fit in 32 bits, so that is the path taken. */
static i64 ceil_div(i64 a, i64 b)
{
    if (((a + b) | b) >> 31 == 0) return (i64)(((uint32_t)a + (uint32_t)b - 1) / (uint32_t)b);
    return (a + b - 1) / b;
}

static double cost_per_token(i64 rows, i64 block_m)
{
    i64 padded = rows <= SMALL_M ? SMALL_M : ceil_div(rows, block_m) * block_m;
    return 1.0 + (double)padded / 64.0;
}

/* work_list._chunk_lengths for segments [0, s): seg_q_count gives the rows, seg_tokens the
 * tokens; writes seg_len. */
static void chunk_lengths(i64 s, const i64 *k, const double *f, const i64 *seg_tokens,
                          const i64 *seg_q_count, i64 *seg_len, double *want, double *length)
{
    i64 block_n = k[K_BLOCK_N];
    if (k[K_FIXED_CHUNK]) {
        i64 fixed = ceil_div(k[K_FIXED_CHUNK], block_n) * block_n;
        for (i64 i = 0; i < s; i++) {
            i64 cap = seg_tokens[i] > 1 ? seg_tokens[i] : 1;
            seg_len[i] = fixed < cap ? fixed : cap;
        }
        return;
    }
    double total = 0.0;  /* exact: every term is a multiple of 1/4 far below 2^53 */
    for (i64 i = 0; i < s; i++)
        total += (double)seg_tokens[i] * cost_per_token(seg_q_count[i] * k[K_GROUP], k[K_BLOCK_M]);
    double programs = f[F_WAVES] * (double)k[K_NUM_SMS] / (double)k[K_NUM_KV_HEADS];
    if (programs < 1.0) programs = 1.0;
    double target = total / programs;
    double shortest = f[F_MIN_CHUNK_BLOCKS] * (double)block_n;
    if (target < shortest) target = shortest;
    double chunks = 0.0;
    for (i64 i = 0; i < s; i++) {
        i64 rows = seg_q_count[i] * k[K_GROUP];
        double cost = cost_per_token(rows, k[K_BLOCK_M]), tokens = (double)seg_tokens[i];
        want[i] = ceil(target / cost);
        double floor_len = ceil(f[F_PARTIAL_RATIO] * 2.0 * (double)rows / cost);
        if (f[F_FLOOR_OVER_WANT] > 0 && f[F_FLOOR_OVER_WANT] * want[i] < floor_len)
            floor_len = f[F_FLOOR_OVER_WANT] * want[i];
        double len = want[i] > floor_len ? want[i] : floor_len;
        length[i] = len < tokens ? len : tokens;
        double c = ceil(tokens / (length[i] > 1.0 ? length[i] : 1.0));
        chunks += c > 1.0 ? c : 1.0;
    }
    int starved = chunks * (double)k[K_NUM_KV_HEADS] < (double)k[K_NUM_SMS];
    for (i64 i = 0; i < s; i++) {
        double tokens = (double)seg_tokens[i];
        if (starved) length[i] = want[i] < tokens ? want[i] : tokens;
        double c = ceil(tokens / (length[i] > 1.0 ? length[i] : 1.0));
        if (c < 1.0) c = 1.0;
        double len = ceil(tokens / c / (double)block_n) * (double)block_n;
        double cap = tokens > 1.0 ? tokens : 1.0;
        seg_len[i] = (i64)(len < cap ? len : cap);
    }
}

/* work_list._segments then _chunk_lengths.  Returns the number of segments (or minus the number
 * needed when seg_cap is smaller); counts[0] = work items, counts[1] = partial slots.
 * scratch: 3 seg_cap doubles. */
static i64 segments(i64 n, const i64 *k, const double *f, const i64 *indptr,
                    const i64 *query_begin, const i64 *query_end, i64 *seg, i64 seg_cap,
                    i64 *counts, double *scratch)
{
    i64 *seg_node = seg, *seg_qb = seg + seg_cap, *seg_qc = seg + 2 * seg_cap,
        *seg_len = seg + 3 * seg_cap;
    i64 group_queries = k[K_REREAD_GROUP_ROWS] / k[K_GROUP];
    if (group_queries < 1) group_queries = 1;
    i64 s = 0;
    for (int pass = 0; pass < 2; pass++) {  /* count, then (if they fit) write */
        s = 0;
        for (i64 i = 0; i < n; i++) {
            i64 tokens = indptr[i + 1] - indptr[i], queries = query_end[i] - query_begin[i];
            if (tokens <= 0 || queries <= 0) continue;
            int fits = !k[K_NEEDS_L2] || tokens * k[K_KV_BYTES_PER_TOKEN] <= k[K_L2_BYTES] / 4;
            i64 per_piece = queries > k[K_REREAD_MIN_QUERIES] && fits ? group_queries : queries;
            if (pass == 0) { s += ceil_div(queries, per_piece); continue; }
            for (i64 q = query_begin[i]; q < query_end[i]; q += per_piece, s++) {
                seg_node[s] = i;
                seg_qb[s] = q;
                seg_qc[s] = query_end[i] - q < per_piece ? query_end[i] - q : per_piece;
            }
        }
        if (pass == 0 && s > seg_cap) return -s;
    }
    i64 *seg_tokens = (i64 *)scratch;
    for (i64 i = 0; i < s; i++) seg_tokens[i] = indptr[seg_node[i] + 1] - indptr[seg_node[i]];
    chunk_lengths(s, k, f, seg_tokens, seg_qc, seg_len, scratch + s, scratch + 2 * s);
    counts[0] = counts[1] = 0;
    for (i64 i = 0; i < s; i++) {
        i64 chunks = ceil_div(seg_tokens[i], seg_len[i]);
        counts[0] += chunks;
        counts[1] += chunks * seg_qc[i];
    }
    return s;
}

/* ---------------------------------------------------------------------------- work items */

typedef struct { i64 small; double cost; i64 kv_begin, q_begin, index; } item_key;

/* a goes before b: lexsort's order (large items first when the launches are split, heaviest
 * first, then by KV begin and query begin, then stable). */
static inline int item_before(const item_key *a, const item_key *b)
{
    if (a->small != b->small) return a->small < b->small;
    if (a->cost != b->cost) return a->cost > b->cost;
    if (a->kv_begin != b->kv_begin) return a->kv_begin < b->kv_begin;
    if (a->q_begin != b->q_begin) return a->q_begin < b->q_begin;
    return a->index < b->index;
}

/* Bottom-up merge sort of keys[0:m] (tmp: m more); the comparison inlined, where qsort's
 * call per comparison took a third of a plan's C time.  Returns the sorted array (keys or tmp). */
static item_key *sort_items(item_key *keys, item_key *tmp, i64 m)
{
    for (i64 width = 1; width < m; width *= 2) {
        for (i64 lo = 0; lo < m; lo += 2 * width) {
            i64 mid = lo + width < m ? lo + width : m, hi = lo + 2 * width < m ? lo + 2 * width : m;
            i64 i = lo, j = mid, o = lo;
            while (i < mid && j < hi) tmp[o++] = item_before(&keys[j], &keys[i]) ? keys[j++] : keys[i++];
            while (i < mid) tmp[o++] = keys[i++];
            while (j < hi) tmp[o++] = keys[j++];
        }
        item_key *swap = keys; keys = tmp; tmp = swap;
    }
    return keys;
}

/* work_list._work_items, _merge_lists and _plan_items_numpy's item order.  shift: per-node move of the
 * first index (tail slack) or NULL.  Writes items (5 x num_items, sorted), item_node and
 * item_last (sorted), merge_indptr [B+1], merge_slots [P], partial_counts [B].
 * scratch: 7 * num_items int64 + 2 * num_items item_key. */
static void work_items(i64 s, i64 num_items, i64 b, const i64 *k, const i64 *indptr,
                       const i64 *seg, i64 seg_cap, const i64 *query_order, const i64 *shift,
                       i64 *items, i64 *item_node, i64 *item_last, i64 *merge_indptr,
                       i64 *merge_slots, i64 *partial_counts, i64 *scratch, item_key *keys)
{
    const i64 *seg_node = seg, *seg_qb = seg + seg_cap, *seg_qc = seg + 2 * seg_cap,
              *seg_len = seg + 3 * seg_cap;
    i64 *raw = scratch, *raw_node = scratch + 5 * num_items, *raw_last = scratch + 6 * num_items;
    i64 m = 0, slot = 0;
    for (i64 i = 0; i < s; i++) {
        i64 node = seg_node[i], tokens = indptr[node + 1] - indptr[node];
        i64 chunks = ceil_div(tokens, seg_len[i]);
        for (i64 c = 0; c < chunks; c++, m++) {
            i64 len = tokens - c * seg_len[i];
            raw[m] = indptr[node] + c * seg_len[i] + (shift ? shift[node] : 0);
            raw[num_items + m] = len < seg_len[i] ? len : seg_len[i];
            raw[2 * num_items + m] = seg_qb[i];
            raw[3 * num_items + m] = seg_qc[i];
            raw[4 * num_items + m] = slot;
            raw_node[m] = node;
            raw_last[m] = c == chunks - 1;
            slot += seg_qc[i];
        }
    }
    /* Partial slots per query id in slot order (slots number the items' queries in turn). */
    memset(partial_counts, 0, sizeof(i64) * b);
    for (i64 i = 0; i < m; i++)
        for (i64 q = 0; q < raw[3 * num_items + i]; q++)
            partial_counts[query_order[raw[2 * num_items + i] + q]]++;
    merge_indptr[0] = 0;
    for (i64 q = 0; q < b; q++) merge_indptr[q + 1] = merge_indptr[q] + partial_counts[q];
    for (i64 i = 0, p = 0; i < m; i++)
        for (i64 q = 0; q < raw[3 * num_items + i]; q++, p++) {
            i64 query = query_order[raw[2 * num_items + i] + q];
            merge_slots[merge_indptr[query + 1] - partial_counts[query]--] = p;
        }
    for (i64 q = 0; q < b; q++) partial_counts[q] = merge_indptr[q + 1] - merge_indptr[q];
    for (i64 i = 0; i < m; i++) {
        i64 rows = raw[3 * num_items + i] * k[K_GROUP];
        keys[i].small = k[K_SPLIT_LAUNCHES] ? rows <= SMALL_M : 0;
        keys[i].cost = (double)raw[num_items + i] * cost_per_token(rows, k[K_BLOCK_M]);
        keys[i].kv_begin = raw[i];
        keys[i].q_begin = raw[2 * num_items + i];
        keys[i].index = i;
    }
    const item_key *sorted = sort_items(keys, keys + m, m);
    for (i64 i = 0; i < m; i++) {
        i64 from = sorted[i].index;
        for (int r = 0; r < 5; r++) items[r * num_items + i] = raw[r * num_items + from];
        item_node[i] = raw_node[from];
        item_last[i] = raw_last[from];
    }
}

/* The whole plan after grouping: segments, chunk lengths, work items in their final order and
 * the merge lists.  out = [num_items I, num_partials P, most partials of a query, most rows of
 * an item, items of more than SMALL_M rows, items 5 x I, item_node [I], item_last [I],
 * merge_indptr [B+1], merge_slots [P], partial_counts [B]].  Returns 0, minus the out length
 * needed when out_cap is smaller (nothing written), or -1 out of memory. */
i64 deft_plan(i64 n, i64 b, const i64 *k, const double *f, const i64 *indptr,
              const i64 *query_begin, const i64 *query_end, const i64 *query_order,
              const i64 *shift, i64 *out, i64 out_cap)
{
    i64 seg_cap = 2 * (n + b) + 1, s, counts[2] = {0, 0}, status = 0;
    i64 *seg = NULL, *scratch = NULL;
    double *seg_scratch = NULL;
    for (;;) {
        seg = malloc(sizeof(i64) * 4 * seg_cap);
        seg_scratch = malloc(sizeof(double) * 3 * seg_cap);
        if (!seg || !seg_scratch) { status = -1; goto done; }
        s = segments(n, k, f, indptr, query_begin, query_end, seg, seg_cap, counts, seg_scratch);
        if (s >= 0) break;
        free(seg); free(seg_scratch);
        seg_cap = -s;  /* many nodes split into row groups: exactly as many as needed */
    }
    i64 m = counts[0], p = counts[1], needed = PLAN_HEADER + 7 * m + 2 * b + 1 + p;
    if (needed > out_cap) { status = -needed; goto done; }  /* needed >= PLAN_HEADER + 1 */
    scratch = malloc(sizeof(i64) * 7 * (m + 1) + sizeof(item_key) * 2 * (m + 1));
    if (!scratch) { status = -1; goto done; }
    i64 *o = out + PLAN_HEADER, *partial_counts = o + 7 * m + b + 1 + p;
    work_items(s, m, b, k, indptr, seg, seg_cap, query_order, shift, o, o + 5 * m, o + 6 * m,
               o + 7 * m, o + 7 * m + b + 1, partial_counts, scratch,
               (item_key *)(scratch + 7 * (m + 1)));
    out[0] = m; out[1] = p; out[2] = out[3] = out[4] = 0;
    for (i64 q = 0; q < b; q++)
        if (partial_counts[q] > out[2]) out[2] = partial_counts[q];
    for (i64 i = 0; i < m; i++) {
        i64 rows = o[3 * m + i] * k[K_GROUP];
        if (rows > out[3]) out[3] = rows;
        out[4] += rows > SMALL_M;
    }
done:
    free(seg); free(seg_scratch); free(scratch);
    return status;
}

/* A whole decode step's planning in one call: validation, short tails, grouping, the plan, and
 * the metadata the kernels read written straight into the caller's (pinned) int32 upload
 * buffer.  The steps are plan_native.c's; this file strings them together, which from Python
 * took some twenty ctypes and numpy calls per plan (about 0.3 ms of a 256-query ToT plan on the
 * H100 hosts' CPUs).  kernels/native.py's plan_step is the caller; kernels/planner.py the
 * reference it is tested against (tests/kernels/test_plan_native.py: the same plan).
 *
 * host (int64), in this order:
 *   header       [STEP_HEADER]  see the H_* names
 *   query_order  [B]   query_begin [N]   query_end [N]           (deft_layout's out)
 *   kept_indptr  [N+1] the forest's indptr with the short tails taken out (when some are)
 *   tail_indptr  [B+1] tail_queries [B] (the first H_TAILS hold the queries with a tail)
 *   plan         deft_plan's out: header, items 5 x I, item_node, item_last, merge_indptr,
 *                merge_slots, partial_counts
 * blob (int32), in this order (planner.py's upload order):
 *   kv_indices [total - taken], query_order [B], merge_indptr [B+1], merge_slots [P],
 *   items 5 x [I], then with short tails tail_indptr [B+1], tail_slots [taken], then when they
 *   are packed pack_info [3 + T] (T, tails per pack, first pack partial, the T queries) and
 *   pack_slots [B] (a query's packed partial, or -1).
 */
#include <string.h>

#include "plan_native.h"

enum { H_ITEMS, H_PARTIALS, H_MOST_PARTIALS, H_MOST_ROWS, H_LARGE, H_TAKEN, H_LONGEST, H_TAILS,
       H_PER_PACK, H_BLOB, H_HOST, STEP_HEADER = 16 };
#define STEP_GROW (-2)  /* a buffer is too small: H_BLOB and H_HOST hold lengths that suffice */

static void slots_to_i32(int32_t *to, const void *from, i64 at, i64 count, i64 index_bytes)
{
    if (index_bytes == 4) {
        memcpy(to, (const int32_t *)from + at, sizeof(int32_t) * count);
        return;
    }
    const i64 *slots = (const i64 *)from + at;
    for (i64 t = 0; t < count; t++) to[t] = (int32_t)slots[t];
}

static void i64_to_i32(int32_t *to, const i64 *from, i64 count)
{
    for (i64 t = 0; t < count; t++) to[t] = (int32_t)from[t];
}

/* short_tails.tails_per_pack */
static i64 tails_per_pack(i64 num_tails, const i64 *k, const double *f)
{
    i64 most = k[K_TAIL_PACK_ROWS] / k[K_GROUP];
    i64 programs = (i64)((double)k[K_NUM_SMS] * f[F_WAVES]);
    i64 spread = num_tails * k[K_NUM_KV_HEADS] / (programs > 0 ? programs : 1);
    most = most > 1 ? most : 1;
    spread = spread > 1 ? spread : 1;
    most = most < num_tails ? most : num_tails;
    return most < spread ? most : spread;
}

/* The blob (see the top of the file) from the finished host arrays. */
static void write_blob(int32_t *blob, i64 n, i64 b, i64 index_bytes, const i64 *indptr,
                       const void *kv_indices, const i64 *query_node, const i64 *h,
                       const i64 *query_order, const i64 *kept_indptr, const i64 *tail_indptr,
                       const i64 *tail_queries, const i64 *plan)
{
    i64 taken = h[H_TAKEN], m = h[H_ITEMS], p = h[H_PARTIALS], t = h[H_TAILS];
    if (taken) {
        for (i64 i = 0; i < n; i++)
            slots_to_i32(blob + kept_indptr[i], kv_indices, indptr[i],
                         kept_indptr[i + 1] - kept_indptr[i], index_bytes);
    } else {
        slots_to_i32(blob, kv_indices, 0, indptr[n], index_bytes);
    }
    int32_t *at = blob + indptr[n] - taken;
    const i64 *merge_indptr = plan + PLAN_HEADER + 7 * m;
    i64_to_i32(at, query_order, b); at += b;
    i64_to_i32(at, merge_indptr, b + 1); at += b + 1;
    i64_to_i32(at, merge_indptr + b + 1, p); at += p;
    i64_to_i32(at, plan + PLAN_HEADER, 5 * m); at += 5 * m;
    if (!taken) return;
    i64_to_i32(at, tail_indptr, b + 1); at += b + 1;
    for (i64 q = 0; q < b; q++)
        slots_to_i32(at + tail_indptr[q], kv_indices, indptr[query_node[q]],
                     tail_indptr[q + 1] - tail_indptr[q], index_bytes);
    at += taken;
    if (!h[H_PER_PACK]) return;
    at[0] = (int32_t)t; at[1] = (int32_t)h[H_PER_PACK]; at[2] = (int32_t)p;
    i64_to_i32(at + 3, tail_queries, t);
    int32_t *pack_slots = at + 3 + t;
    for (i64 q = 0; q < b; q++) pack_slots[q] = -1;
    for (i64 j = 0; j < t; j++) pack_slots[tail_queries[j]] = (int32_t)(p + j);
}

/* Plans a decode step (see the top of the file).  k/f: the knobs (K_TAIL_BOUND 0 takes no
 * tails); validate: also check that every slot lies in [0, num_slots) (num_slots < 0: no
 * range).  Returns 0,
 * the number of deft_validate's failed check, STEP_GROW, or -1 out of memory.  host_cap must
 * be at least STEP_HEADER + 3B + 3N + 2 + PLAN_HEADER + 2B + 1. */
i64 deft_plan_step(i64 n, i64 b, i64 total, i64 num_slots, i64 index_bytes, i64 validate,
                   const i64 *k, const double *f, const i64 *parent, const i64 *indptr,
                   const void *kv_indices, const i64 *query_node, int32_t *blob, i64 blob_cap,
                   i64 *host, i64 host_cap)
{
    /* The forest's shape is always checked (O(N + B), and nothing below reads out of bounds
     * then); validate adds the slot range check, O(total). */
    i64 fault = deft_validate(n, b, total, validate ? num_slots : -1, index_bytes, parent,
                              indptr, kv_indices, query_node);
    if (fault) return fault;
    i64 *h = host, *query_order = host + STEP_HEADER, *query_begin = query_order + b,
        *query_end = query_begin + n, *kept_indptr = query_end + n,
        *tail_indptr = kept_indptr + n + 1, *tail_queries = tail_indptr + b + 1,
        *plan = tail_queries + b;
    memset(h, 0, sizeof(i64) * STEP_HEADER);
    const i64 *plan_indptr = indptr;
    if (k[K_TAIL_BOUND] > 0) {
        i64 info[2];
        i64 taken = deft_find_short_tails(n, b, k[K_TAIL_BOUND], parent, indptr, query_node,
                                          kept_indptr, tail_indptr, tail_queries, info);
        if (taken < 0) return -1;
        if (taken) {
            h[H_TAKEN] = taken; h[H_LONGEST] = info[0]; h[H_TAILS] = info[1];
            plan_indptr = kept_indptr;
        }
    }
    if (deft_layout(n, b, parent, query_node, query_order)) return -1;
    i64 fixed = plan - host;
    i64 status = deft_plan(n, b, k, f, plan_indptr, query_begin, query_end, query_order, NULL,
                           plan, host_cap - fixed);
    if (status == -1) return -1;
    if (status < 0) {  /* the items' blob part is at most the plan's own length */
        h[H_HOST] = fixed - status;
        h[H_BLOB] = total + 5 * b + 5 - status;
        return STEP_GROW;
    }
    for (int i = 0; i < PLAN_HEADER; i++) h[i] = plan[i];  /* H_ITEMS .. H_LARGE */
    i64 m = h[H_ITEMS], p = h[H_PARTIALS];
    if (h[H_TAKEN] && h[H_LONGEST] > k[K_MERGE_TAIL_TOKENS])
        h[H_PER_PACK] = tails_per_pack(h[H_TAILS], k, f);
    h[H_HOST] = fixed + PLAN_HEADER + 7 * m + 2 * b + 1 + p;
    h[H_BLOB] = total + 2 * b + 1 + p + 5 * m + (h[H_TAKEN] ? b + 1 : 0)
                + (h[H_PER_PACK] ? 3 + h[H_TAILS] + b : 0);
    if (h[H_BLOB] > blob_cap) return STEP_GROW;
    write_blob(blob, n, b, index_bytes, indptr, kv_indices, query_node, h, query_order,
               kept_indptr, tail_indptr, tail_queries, plan);
    return 0;
}

/* Declarations shared by the planner's C core (plan_native.c: the steps) and plan_step.c (the
 * steps strung together, one call per decode step).  kernels/native.py compiles both into one
 * library and loads it with ctypes. */
#ifndef DEFT_PLAN_NATIVE_H
#define DEFT_PLAN_NATIVE_H

#include <stdint.h>

typedef int64_t i64;

#define SMALL_M 16
#define PLAN_HEADER 5

/* Knobs, in this order (planner.py's PlannerConfig and build_plan's locals; native.Knobs). */
enum { K_GROUP, K_BLOCK_N, K_BLOCK_M, K_NUM_SMS, K_NUM_KV_HEADS, K_L2_BYTES, K_KV_BYTES_PER_TOKEN,
       K_REREAD_MIN_QUERIES, K_REREAD_GROUP_ROWS, K_NEEDS_L2, K_FIXED_CHUNK, K_SPLIT_LAUNCHES,
       K_TAIL_BOUND, K_MERGE_TAIL_TOKENS, K_TAIL_PACK_ROWS, K_COUNT };
enum { F_WAVES, F_PARTIAL_RATIO, F_FLOOR_OVER_WANT, F_MIN_CHUNK_BLOCKS, F_COUNT };

i64 deft_validate(i64 n, i64 b, i64 total, i64 num_slots, i64 index_bytes, const i64 *parent,
                  const i64 *indptr, const void *kv_indices, const i64 *query_node);
i64 deft_find_short_tails(i64 n, i64 b, i64 max_tokens, const i64 *parent, const i64 *indptr,
                          const i64 *query_node, i64 *new_indptr, i64 *tail_indptr,
                          i64 *tail_queries, i64 *info);
i64 deft_layout(i64 n, i64 b, const i64 *parent, const i64 *query_node, i64 *out);
i64 deft_plan(i64 n, i64 b, const i64 *k, const double *f, const i64 *indptr,
              const i64 *query_begin, const i64 *query_end, const i64 *query_order,
              const i64 *shift, i64 *out, i64 out_cap);

#endif

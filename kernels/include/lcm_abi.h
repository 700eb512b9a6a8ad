// The kernel ABI: one parameter struct per kernel family, passed by value as the kernel's only argument
// (`const __grid_constant__`). This header is the single definition; Rust gets the same structs from
// bindgen (src/cuda/abi.rs, checked in, compared against a fresh bindgen run by a test) and both sides
// assert the sizes, so a field added on one side only fails the build.
//
// Device pointers are `LCM_PTR(T)`: a typed pointer inside CUDA code (and in the emulation build, where
// device memory is host memory), a 64-bit integer elsewhere (what the driver API's CUdeviceptr is), so
// the C view and the CUDA view have one layout.
//
// Conventions: activations are f16 NHWC (`[B, H, W, C]`, a token sequence `[B, T, C]` is the same
// memory); weights are f16 in the layout the kernel documents; sizes are `int` unless a product of them
// can pass 2^31 (then `unsigned long long`). Every struct is laid out pointers first, then 8-byte
// integers, then 4-byte fields, padded explicitly to a multiple of 8 bytes.
#ifndef LCM_ABI_H
#define LCM_ABI_H

#if defined(__CUDACC__) || defined(LCM_EMULATE)
#include <cuda_fp16.h>
#define LCM_PTR(T) T*
#define LCM_CPTR(T) const T*
#else
#define LCM_PTR(T) unsigned long long
#define LCM_CPTR(T) unsigned long long
#endif

#ifdef __cplusplus
#define LCM_STATIC_ASSERT(c, m) static_assert(c, m)
#else
#define LCM_STATIC_ASSERT(c, m) _Static_assert(c, m)
#endif

// What the model predicts (diffusers' `prediction_type`).
enum LcmPrediction { LCM_PRED_EPSILON = 0, LCM_PRED_V = 1, LCM_PRED_SAMPLE = 2 };

// How a step updates the sample (lcm_core::lcm::StepRule): LCMScheduler; DDIM and TCD; Euler(-ancestral).
enum LcmStepRule { LCM_RULE_CONSISTENCY = 0, LCM_RULE_DDIM = 1, LCM_RULE_EULER = 2 };

// One step's coefficients: a row of the denoising graph's schedule input. The same layout as
// lcm_core::lcm::StepRow on the Rust side (tests/abi.rs compares them), where each field's meaning
// and which rule reads it are documented.
typedef struct LcmStepRow {
    float timestep;
    float guidance;
    float sqrt_alpha_t;
    float sqrt_beta_t;
    float sigma;
    float sigma_sq1;
    float input_div;
    float x0_coef;
    float skip_coef;
    float eps_coef;
    float dt;
    float renoise;
    float noise;
    float keep_image;
    float keep_noise;
    float pad;
} LcmStepRow;
LCM_STATIC_ASSERT(sizeof(LcmStepRow) == 64, "LcmStepRow layout changed: update src/cuda/abi.rs and lcm_core::lcm");

// One sampler step over `n` latent elements (kernels/lcm_step.cu; diffusers' LCMScheduler, DDIMScheduler,
// TCDScheduler, EulerDiscreteScheduler and EulerAncestralDiscreteScheduler `step`; lcm_core::lcm::step
// on the host, in the same order of operations):
//   m = guided ? u + g·(c − u) : model_output[i]       (u = model_output[i], c = model_output[n + i])
//   consistency: x0 from sqrt(a_t), sqrt(1−a_t) by the prediction, clamped when clip; y = x0_coef·x0 + skip_coef·x
//   ddim:        x0 and eps likewise;                                            y = x0_coef·x0 + eps_coef·eps
//   euler:       x0 = x − σ·m (v: m·(−σ/input_div) + x/sigma_sq1);               y = x + ((x − x0)/σ)·dt
//   out = renoise·y + noise·z with this step's noise z, or y when it takes none (noise = 0)
// Latents, noise and the row are f32: they travel from step to step, where f16 would cost accuracy.
typedef struct LcmStepParams {
    LCM_CPTR(float) sample;
    LCM_CPTR(__half) model_output;  // [n] or [2n] when guided
    LCM_CPTR(float) noise;          // 0 at steps that take none
    LCM_CPTR(LcmStepRow) row;
    LCM_PTR(float) out;
    unsigned long long n;
    float clip_range;               // clamp x0 to ±clip_range when clip != 0
    int clip;
    int prediction;                 // enum LcmPrediction
    int guided;
    int rule;                       // enum LcmStepRule
    int pad0;
} LcmStepParams;
LCM_STATIC_ASSERT(sizeof(LcmStepParams) == 72, "LcmStepParams layout changed: update src/cuda/abi.rs");

// Inpainting's blend after an LCM step (kernels/lcm_step.cu, `inpaint_blend_f32`), n latent elements of c
// channels: keep = image (last != 0) or keep_image·image + keep_noise·noise (the row's), then
// out = (1 − mask[i / c])·keep + mask[i / c]·x. All f32; lcm_core::lcm::inpaint_blend is the host's twin.
typedef struct LcmBlendParams {
    LCM_CPTR(float) x;
    LCM_CPTR(float) image;
    LCM_CPTR(float) noise;
    LCM_CPTR(float) mask;
    LCM_CPTR(LcmStepRow) row;
    LCM_PTR(float) out;
    unsigned long long n;
    int c;
    int last;
} LcmBlendParams;
LCM_STATIC_ASSERT(sizeof(LcmBlendParams) == 64, "LcmBlendParams layout changed: update src/cuda/abi.rs");

// Implicit GEMM on tensor cores (kernels/gemm.cu), serving conv2d and linear alike:
//   out[m, n] = alpha·Σ_k A[m, k]·W[n, k] (+ bias[n]) (+ residual[m, n])
// with M = batch·ho·wo output pixels and N = co. A is never materialised: A[m, k] with
// k = (ky·kw + kx)·cip + c reads x[b, oy·stride − pad_top + ky, ox·stride − pad_left + kx, c], zero
// outside the image or when c ≥ ci. W is `[co, kh, kw, cip]` f16 (torch's `[co, ci, kh, kw]` reordered,
// input channels zero-padded to cip = ci rounded up to 8, so every 8 consecutive k share one tap).
// A linear layer over `[M, K]` is the 1x1 conv with batch = 1, h = ho = 1, w = wo = M, ci = K.
//
// A second K segment (k2 > 0) appends `a2 [M, k2]` against `weight2 [N, k2]` to the same sum: the unmerged
// LoRA path y = x·Wᵀ + (x·Aᵀ)·(scale·B)ᵀ in one pass (a2 = x·Aᵀ, computed by an earlier launch;
// weight2 = scale·B). k2 is a multiple of 8.
//
// geglu != 0: the weight's rows are [hidden (N/2) | gate (N/2)]; the kernel computes virtual column 2j
// from row j and 2j+1 from row N/2 + j so one thread holds both, and writes
// out[m, j] = (h + bias[j])·gelu(g + bias[N/2 + j]) with ldc = N/2. No residual with geglu.
typedef struct LcmGemmParams {
    LCM_CPTR(__half) x;
    LCM_CPTR(__half) weight;    // [co, kh, kw, cip]
    LCM_CPTR(__half) bias;      // [N] or 0
    LCM_CPTR(__half) residual;  // [M, ldc] or 0
    LCM_PTR(__half) out;        // [M, ldc]
    LCM_CPTR(__half) a2;        // [M, k2] or 0
    LCM_CPTR(__half) weight2;   // [N, k2] or 0
    int batch, h, w, ci;        // input image
    int ho, wo, co;             // output image; co = N
    int kh, kw, stride, pad_top, pad_left;
    int cip;                    // ci rounded up to 8: the weight's channel stride
    int k2;                     // second segment width (0 = none)
    int ldc;                    // output row stride in elements (co, or co/2 with geglu)
    int geglu;
    float alpha;
    int pad0;
} LcmGemmParams;
LCM_STATIC_ASSERT(sizeof(LcmGemmParams) == 128, "LcmGemmParams layout changed: update src/cuda/abi.rs");

// Fused multi-head attention, flash style (kernels/attention.cu): out = softmax(q·kᵀ·scale)·v per head,
// the scores never leave the chip. q `[B, n_q, ·]`, k and v `[B, n_kv, ·]`, out `[B, n_q, ·]`; head h
// reads channels h·head_dim .. (h+1)·head_dim of each row; ld* are the row strides in elements (heads ·
// head_dim when unpacked). causal masks key j > query i. Batch rows kv_limit_rows_begin ..
// kv_limit_rows_end see only keys 0 .. kv_limit_keys (≤ n_kv), as a call over those keys alone would;
// the batch strides keep n_kv. An empty row range (0, 0) limits nothing.
typedef struct LcmAttnParams {
    LCM_CPTR(__half) q;
    LCM_CPTR(__half) k;
    LCM_CPTR(__half) v;
    LCM_PTR(__half) out;
    int batch, heads, n_q, n_kv, head_dim;
    int ldq, ldk, ldv, ldo;
    float scale_log2;           // softmax scale · log2(e): the kernel works in base 2
    int kv_limit_rows_begin, kv_limit_rows_end, kv_limit_keys;
    int pad0;
} LcmAttnParams;
LCM_STATIC_ASSERT(sizeof(LcmAttnParams) == 88, "LcmAttnParams layout changed: update src/cuda/abi.rs");

// GroupNorm over NHWC `[B, hw, C]` in three launches (kernels/norm.cu), all with this struct:
//   stats:    grid (chunks, B): per chunk of `chunk_pixels` pixels, per group, (mean, M2) into `partial`
//             `[B, chunks, groups, 2]` f32;
//   finalize: grid (B): Chan's parallel merge of the chunks -> (mean, rstd) into `stats` `[B, groups, 2]`;
//   apply:    grid (chunks, B): y = (x − mean)·rstd·gamma + beta, then SiLU when silu != 0.
// Each block is `cols · rows` threads, cols = C/vec, vec = 8 when C % 8 == 0 (16-byte accesses) else 1.
typedef struct LcmGroupNormParams {
    LCM_CPTR(__half) x;
    LCM_CPTR(__half) gamma;
    LCM_CPTR(__half) beta;
    LCM_PTR(__half) out;
    LCM_PTR(float) partial;
    LCM_PTR(float) stats;
    int batch, hw, c, groups;
    int chunks, chunk_pixels;
    float eps;
    int silu;
} LcmGroupNormParams;
LCM_STATIC_ASSERT(sizeof(LcmGroupNormParams) == 80, "LcmGroupNormParams layout changed: update src/cuda/abi.rs");

// LayerNorm over the last dimension of `[rows, c]`; one warp per row, statistics in f32 (two passes over
// the row, which stays in L1).
typedef struct LcmLayerNormParams {
    LCM_CPTR(__half) x;
    LCM_CPTR(__half) gamma;
    LCM_CPTR(__half) beta;
    LCM_PTR(__half) out;
    int rows, c;
    float eps;
    int pad0;
} LcmLayerNormParams;
LCM_STATIC_ASSERT(sizeof(LcmLayerNormParams) == 48, "LcmLayerNormParams layout changed: update src/cuda/abi.rs");

// The functions of the `map` kernels (one per `lcm_core::MapKind`; values fixed: they travel in `op`).
enum LcmMapOp {
    LCM_MAP_SILU = 0,
    LCM_MAP_GELU = 1,
    LCM_MAP_QUICK_GELU = 2,
    LCM_MAP_RELU = 3,
    LCM_MAP_TANH_CLAMP = 4,  // 3·tanh(x/3), TAESD's latent clamp
    LCM_MAP_SCALE = 5,       // a·mul + add
    LCM_MAP_ADD = 6,         // a + b
};

// The element-wise family (kernels/eltwise.cu), `n` output elements each:
//   map_f16          out = op(a), or op(a, b) for a binary op (enum LcmMapOp; mul, add: its constants)
//   add_channel_f16  out[b, p, ch] = a[b, p, ch] + b[b, ch]   (c = channels, hw = pixels per batch)
//   geglu_f16        out[r, j] = a[r, j]·gelu(a[r, c + j])      (c = output width)
typedef struct LcmEltwiseParams {
    LCM_CPTR(__half) a;
    LCM_CPTR(__half) b;
    LCM_PTR(__half) out;
    unsigned long long n;
    unsigned long long hw;
    int c;
    int op;                     // enum LcmMapOp
    float mul;
    float add;
} LcmEltwiseParams;
LCM_STATIC_ASSERT(sizeof(LcmEltwiseParams) == 56, "LcmEltwiseParams layout changed: update src/cuda/abi.rs");

// Weighted residual add (kernels/eltwise.cu, `add_scaled_v8_f16` / `_v1_f16`), `n` output elements:
// out[e] = x[e] + scale[e / per_image]·y[e]. `scale` is one f32 row of weights, one per image, read at
// run time so that a replayed graph takes new weights (a ControlNet's conditioning scale).
typedef struct LcmAddScaledParams {
    LCM_CPTR(__half) x;
    LCM_CPTR(__half) y;
    LCM_CPTR(float) scale;
    LCM_PTR(__half) out;
    unsigned long long n;
    unsigned long long per_image;
} LcmAddScaledParams;
LCM_STATIC_ASSERT(sizeof(LcmAddScaledParams) == 48, "LcmAddScaledParams layout changed: update src/cuda/abi.rs");

// Channel concatenation: out[r, 0..ca] = a[r], out[r, ca..ca+cb] = b[r].
typedef struct LcmConcatParams {
    LCM_CPTR(__half) a;
    LCM_CPTR(__half) b;
    LCM_PTR(__half) out;
    unsigned long long rows;
    int ca, cb;
} LcmConcatParams;
LCM_STATIC_ASSERT(sizeof(LcmConcatParams) == 40, "LcmConcatParams layout changed: update src/cuda/abi.rs");

// Element-type conversion (kernels/eltwise.cu, `cast_f32_f16` and `cast_f16_f32`):
// out[i] = x[i mod n_in] / div + add for i < n, so the output may repeat the input (a guided batch).
// With a schedule row, the divisor is the row's input_div (the sampler's scale_model_input).
typedef struct LcmCastParams {
    LCM_CPTR(void) x;
    LCM_PTR(void) out;
    LCM_CPTR(LcmStepRow) row;       // 0: divide by div
    unsigned long long n;
    unsigned long long n_in;
    float div;
    float add;
} LcmCastParams;
LCM_STATIC_ASSERT(sizeof(LcmCastParams) == 48, "LcmCastParams layout changed: update src/cuda/abi.rs");

// Nearest-neighbour resize NHWC `[B, h, w, c]` -> `[B, ho, wo, c]`, torch's rule:
// src = min(floor(dst · (in/out as f32)), in − 1), with scale_* = (float)in / (float)out from the host.
typedef struct LcmUpsampleParams {
    LCM_CPTR(__half) x;
    LCM_PTR(__half) out;
    int batch, h, w, c, ho, wo;
    float scale_h, scale_w;
} LcmUpsampleParams;
LCM_STATIC_ASSERT(sizeof(LcmUpsampleParams) == 48, "LcmUpsampleParams layout changed: update src/cuda/abi.rs");

// Token plus position embedding: out[b, t] = table[ids[b, t]] + positions[t]. An id outside [0, vocab)
// writes zeros, sets error[0] = 1 and error[1] = the id (the first one to get there); the host reads
// the pair back after the run and reports it: bad input is an error, never a crash.
typedef struct LcmEmbedParams {
    LCM_CPTR(int) ids;
    LCM_CPTR(__half) table;
    LCM_CPTR(__half) positions;
    LCM_PTR(__half) out;
    LCM_PTR(int) error;         // int[2], zero before the run
    int batch, tokens, c, vocab;
} LcmEmbedParams;
LCM_STATIC_ASSERT(sizeof(LcmEmbedParams) == 56, "LcmEmbedParams layout changed: update src/cuda/abi.rs");

// diffusers' get_timestep_embedding: half = dim/2, f_j = exp(−ln(10000)·j/(half − freq_shift)),
// e = [sin(t·f), cos(t·f)] (or [cos, sin] when flip), a zero column last when dim is odd.
typedef struct LcmTimestepParams {
    LCM_CPTR(__half) t;
    LCM_PTR(__half) out;
    int batch, dim;
    float freq_shift;
    int flip_sin_to_cos;
} LcmTimestepParams;
LCM_STATIC_ASSERT(sizeof(LcmTimestepParams) == 32, "LcmTimestepParams layout changed: update src/cuda/abi.rs");

// LoRA merge into a stored weight (kernels/lora.cu): W[n, k] += scale · Σ_j up[n, j]·down[j, k_torch],
// W in the GEMM layout `[co, kh, kw, cip]` (f16), up `[co, rank]` and down `[rank, ci, kh, kw]` in torch
// layout (f32); k_torch = (c·kh + ky)·kw + kx. Padding channels (c ≥ ci) are left alone.
typedef struct LcmLoraMergeParams {
    LCM_PTR(__half) w;
    LCM_CPTR(float) down;
    LCM_CPTR(float) up;
    int co, ci, cip, kh, kw, rank;
    float scale;
    int pad0;
} LcmLoraMergeParams;
LCM_STATIC_ASSERT(sizeof(LcmLoraMergeParams) == 56, "LcmLoraMergeParams layout changed: update src/cuda/abi.rs");

#endif  // LCM_ABI_H

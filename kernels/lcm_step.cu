// The LCM sampler step in one pass over the latents, classifier-free guidance included: x0, denoised
// and the next sample (noise re-injected) per element, with no intermediate buffer. See LcmStepParams;
// the host's twin is lcm_core::lcm::step (same operations in the same order). Also inpainting's blend of
// the kept region after a step (inpaint_blend_f32; lcm_core::lcm::inpaint_blend).
#include "lcm_abi.h"
#include "lcm_device.cuh"

extern "C" __global__ void lcm_step_f32(const __grid_constant__ LcmStepParams p) {
    const LcmStepRow r = *p.row;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < p.n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float x = p.sample[i];
        float m = __half2float(p.model_output[i]);
        if (p.guided) {
            const float c = __half2float(p.model_output[p.n + i]);
            m = m + __fmul_rn(r.guidance, c - m);
        }
        // The _rn intrinsics keep each operation one IEEE rounding under --use_fast_math (as on the host).
        float x0;
        if (p.prediction == LCM_PRED_EPSILON) {
            x0 = __fdiv_rn(x - __fmul_rn(r.sqrt_beta_t, m), r.sqrt_alpha_t);
        } else if (p.prediction == LCM_PRED_V) {
            x0 = __fmul_rn(r.sqrt_alpha_t, x) - __fmul_rn(r.sqrt_beta_t, m);
        } else {
            x0 = m;
        }
        if (p.clip) x0 = fminf(fmaxf(x0, -p.clip_range), p.clip_range);
        const float d = __fmul_rn(r.c_out, x0) + __fmul_rn(r.c_skip, x);
        p.out[i] = p.noise ? __fmul_rn(r.sqrt_alpha_prev, d) + __fmul_rn(r.sqrt_beta_prev, p.noise[i]) : d;
    }
}

extern "C" __global__ void inpaint_blend_f32(const __grid_constant__ LcmBlendParams p) {
    const LcmStepRow r = *p.row;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < p.n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float m = p.mask[i / p.c];
        const float keep =
            p.last ? p.image[i] : __fmul_rn(r.sqrt_alpha_prev, p.image[i]) + __fmul_rn(r.sqrt_beta_prev, p.noise[i]);
        p.out[i] = __fmul_rn(1.0f - m, keep) + __fmul_rn(m, p.x[i]);
    }
}

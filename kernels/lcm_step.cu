// The sampler step in one pass over the latents, classifier-free guidance included: x0, the rule's
// update and the next sample (noise re-injected) per element, with no intermediate buffer. See LcmStepParams;
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
        float y;
        if (p.rule == LCM_RULE_EULER) {
            float x0;
            if (p.prediction == LCM_PRED_EPSILON) {
                x0 = x - __fmul_rn(r.sigma, m);
            } else if (p.prediction == LCM_PRED_V) {
                x0 = __fmul_rn(m, __fdiv_rn(-r.sigma, r.input_div)) + __fdiv_rn(x, r.sigma_sq1);
            } else {
                x0 = m;
            }
            y = x + __fmul_rn(__fdiv_rn(x - x0, r.sigma), r.dt);
        } else {
            const float a = r.sqrt_alpha_t, b = r.sqrt_beta_t;
            float x0, eps;
            if (p.prediction == LCM_PRED_EPSILON) {
                x0 = __fdiv_rn(x - __fmul_rn(b, m), a);
                eps = m;
            } else if (p.prediction == LCM_PRED_V) {
                x0 = __fmul_rn(a, x) - __fmul_rn(b, m);
                eps = __fmul_rn(a, m) + __fmul_rn(b, x);
            } else {
                x0 = m;
                eps = p.rule == LCM_RULE_DDIM ? __fdiv_rn(x - __fmul_rn(a, m), b) : 0.0f;
            }
            if (p.clip) x0 = fminf(fmaxf(x0, -p.clip_range), p.clip_range);
            y = __fmul_rn(r.x0_coef, x0) + (p.rule == LCM_RULE_DDIM ? __fmul_rn(r.eps_coef, eps) : __fmul_rn(r.skip_coef, x));
        }
        p.out[i] = p.noise ? __fmul_rn(r.renoise, y) + __fmul_rn(r.noise, p.noise[i]) : y;
    }
}

extern "C" __global__ void inpaint_blend_f32(const __grid_constant__ LcmBlendParams p) {
    const LcmStepRow r = *p.row;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < p.n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float m = p.mask[i / p.c];
        const float keep =
            p.last ? p.image[i] : __fmul_rn(r.keep_image, p.image[i]) + __fmul_rn(r.keep_noise, p.noise[i]);
        p.out[i] = __fmul_rn(1.0f - m, keep) + __fmul_rn(m, p.x[i]);
    }
}

// The LCM sampler step in one pass over the latents: x0, denoised and the next sample (noise
// re-injected) are computed per element without any intermediate buffer. See LcmStepParams.
#include "lcm_abi.h"

extern "C" __global__ void lcm_step_f32(const __grid_constant__ LcmStepParams p) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < p.n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float x = p.sample[i];
        const float m = p.model_output[i];
        float x0;
        if (p.prediction == LCM_PRED_EPSILON) {
            x0 = (x - p.sqrt_beta_t * m) / p.sqrt_alpha_t;
        } else if (p.prediction == LCM_PRED_V) {
            x0 = p.sqrt_alpha_t * x - p.sqrt_beta_t * m;
        } else {
            x0 = m;
        }
        if (p.clip) x0 = fminf(fmaxf(x0, -p.clip_range), p.clip_range);
        const float d = p.c_out * x0 + p.c_skip * x;
        p.denoised[i] = d;
        p.prev_sample[i] = p.add_noise ? p.sqrt_alpha_prev * d + p.sqrt_beta_prev * p.noise[i] : d;
    }
}

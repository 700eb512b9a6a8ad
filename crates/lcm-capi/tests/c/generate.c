/* The C ABI from C: load the tiny fixture model on the CPU, refuse bad calls with a status and a
 * message, generate two images, swap a LoRA in and generate again, cancel a long generation from
 * another thread, and generate guided by a ControlNet (as given, then Canny-preprocessed and resized).
 * Images are written raw (8-bit RGB) for tests/c_abi.rs to compare with the Rust API.
 *
 * usage: generate MODEL_DIR LORA_FILE OUT_DIR CONTROLNET CONTROL_64x64.rgb CONTROL_80x72.rgb
 * (the control images raw 8-bit RGB, 64x64 and 80x72) */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lcm.h"

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__, __LINE__, \
                    #cond, lcm_last_error());                                              \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

static void write_images(const char *dir, const char *name, const LcmImages *im) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    CHECK(fwrite(im->rgb, 1, im->len, f) == im->len);
    CHECK(fclose(f) == 0);
}

/* A raw file of exactly `len` bytes, malloc'ed. */
static unsigned char *read_raw(const char *path, size_t len) {
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    unsigned char *buf = malloc(len);
    CHECK(buf != NULL);
    CHECK(fread(buf, 1, len, f) == len);
    CHECK(fgetc(f) == EOF);
    CHECK(fclose(f) == 0);
    return buf;
}

struct slow {
    LcmPipeline *pipe;
    LcmStatus status;
    volatile int done;
};

static void *slow_generate(void *arg) {
    struct slow *s = arg;
    LcmRequest r = lcm_request_default();
    r.prompt = "slow";
    r.width = 256;
    r.height = 256;
    r.steps = 50;
    LcmImages *im = NULL;
    s->status = lcm_generate(s->pipe, &r, &im);
    lcm_free_images(im);
    __atomic_store_n(&s->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s MODEL_DIR LORA_FILE OUT_DIR CONTROLNET CONTROL_64x64.rgb CONTROL_80x72.rgb\n",
                argv[0]);
        return 2;
    }
    printf("lcm %s\n", lcm_version());

    /* Bad calls: a status and a message naming the argument, never a crash. */
    LcmPipeline *pipe = NULL;
    CHECK(lcm_pipeline_load(NULL, &pipe) == LCM_ERR_INVALID_ARGUMENT);
    CHECK(strstr(lcm_last_error(), "options") != NULL);
    LcmLoadOptions opts = lcm_load_options_default();
    opts.model = "/no/such/model";
    opts.device = LCM_DEVICE_CPU;
    CHECK(lcm_pipeline_load(&opts, &pipe) == LCM_ERR_FILE && pipe == NULL);
    CHECK(strstr(lcm_last_error(), "/no/such/model") != NULL);

    opts.model = argv[1];
    CHECK(lcm_pipeline_load(&opts, &pipe) == LCM_OK && pipe != NULL);
    CHECK(strcmp(lcm_last_error(), "") == 0);

    LcmRequest req = lcm_request_default();
    req.prompt = "a red house";
    req.width = 64;
    req.height = 64;
    req.steps = 3;
    req.seed = 7;
    req.num_images = 2;
    LcmImages *im = NULL;
    req.width = 65;
    CHECK(lcm_generate(pipe, &req, &im) == LCM_ERR_INVALID_ARGUMENT && im == NULL);
    CHECK(strncmp(lcm_last_error(), "request.width", 13) == 0);
    req.width = 64;
    CHECK(lcm_generate(pipe, &req, &im) == LCM_OK);
    CHECK(im->width == 64 && im->height == 64 && im->count == 2 && im->len == 2 * 64 * 64 * 3);
    write_images(argv[3], "txt2img.rgb", im);
    lcm_free_images(im);

    /* A LoRA swapped in: a missing file is refused, the pipeline keeps its weights. */
    LcmLora lora = {"/no/such/lora.safetensors", 0.5f};
    CHECK(lcm_set_loras(pipe, &lora, 1) == LCM_ERR_FILE);
    lora.path = argv[2];
    CHECK(lcm_set_loras(pipe, &lora, 1) == LCM_OK);
    req.prompt = "a boat";
    req.seed = 11;
    req.steps = 4;
    req.num_images = 1;
    CHECK(lcm_generate(pipe, &req, &im) == LCM_OK);
    write_images(argv[3], "lora.rgb", im);
    lcm_free_images(im);

    /* Prepared LoRAs: a missing file is refused; switching to none, then to the LoRA, gives
       lcm_set_loras' images; another pipeline refuses them. */
    LcmPreparedLoras *with_lora = NULL, *none = NULL;
    LcmLora missing = {"/no/such/lora.safetensors", 0.5f};
    CHECK(lcm_prepare_loras(pipe, &missing, 1, &with_lora) == LCM_ERR_FILE && with_lora == NULL);
    CHECK(strstr(lcm_last_error(), "/no/such/lora.safetensors") != NULL);
    CHECK(lcm_prepare_loras(pipe, &lora, 1, &with_lora) == LCM_OK && with_lora != NULL);
    CHECK(lcm_prepare_loras(pipe, NULL, 0, &none) == LCM_OK && none != NULL);
    CHECK(lcm_use_loras(pipe, none) == LCM_OK);
    CHECK(lcm_generate(pipe, &req, &im) == LCM_OK);
    write_images(argv[3], "prepared_none.rgb", im);
    lcm_free_images(im);
    CHECK(lcm_use_loras(pipe, with_lora) == LCM_OK);
    CHECK(lcm_generate(pipe, &req, &im) == LCM_OK);
    write_images(argv[3], "prepared.rgb", im);
    lcm_free_images(im);
    CHECK(lcm_use_loras(pipe, NULL) == LCM_ERR_INVALID_ARGUMENT);
    LcmPipeline *other = NULL;
    CHECK(lcm_pipeline_load(&opts, &other) == LCM_OK);
    CHECK(lcm_use_loras(other, with_lora) == LCM_ERR_INVALID_ARGUMENT);
    CHECK(strstr(lcm_last_error(), "another pipeline") != NULL);
    lcm_free_pipeline(other);
    lcm_free_prepared_loras(with_lora);
    lcm_free_prepared_loras(none);
    lcm_free_prepared_loras(NULL);

    /* lcm_cancel from this thread stops a long generation running on another. */
    struct slow s = {pipe, -1, 0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, slow_generate, &s) == 0);
    struct timespec pause = {0, 20 * 1000 * 1000};
    while (!__atomic_load_n(&s.done, __ATOMIC_SEQ_CST)) {
        nanosleep(&pause, NULL);
        CHECK(lcm_cancel(pipe) == LCM_OK);
    }
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(s.status == LCM_ERR_CANCELLED);

    /* The pipeline still generates after the cancel. */
    CHECK(lcm_set_loras(pipe, NULL, 0) == LCM_OK);
    CHECK(lcm_generate(pipe, &req, &im) == LCM_OK);
    write_images(argv[3], "after.rgb", im);
    lcm_free_images(im);

    /* ControlNets: none is lcm_generate; bad entries are refused naming them; one ControlNet as given,
       then with Canny preprocessing, a guidance window and a control image of another size. */
    CHECK(lcm_generate_controlled(pipe, &req, NULL, 0, &im) == LCM_OK);
    write_images(argv[3], "controlled_none.rgb", im);
    lcm_free_images(im);
    unsigned char *control64 = read_raw(argv[5], 64 * 64 * 3);
    unsigned char *control80 = read_raw(argv[6], 80 * 72 * 3);
    LcmControlNet cn = lcm_controlnet_default();
    CHECK(cn.scale == 1.0f && cn.start == 0.0 && cn.end == 1.0 && cn.preprocess == NULL);
    cn.model = argv[4];
    cn.image_rgb = control64;
    cn.image_width = 64;
    cn.image_height = 64;
    cn.scale = 0.7f;
    CHECK(lcm_generate_controlled(pipe, &req, NULL, 1, &im) == LCM_ERR_INVALID_ARGUMENT && im == NULL);
    CHECK(strncmp(lcm_last_error(), "controlnets", 11) == 0);
    LcmControlNet bad[2] = {cn, cn};
    bad[1].model = "/no/such/controlnet";
    CHECK(lcm_generate_controlled(pipe, &req, bad, 2, &im) == LCM_ERR_FILE && im == NULL);
    CHECK(strncmp(lcm_last_error(), "controlnets[1].model", 20) == 0);
    CHECK(strstr(lcm_last_error(), "/no/such/controlnet") != NULL);
    bad[1] = cn;
    bad[1].end = 0.0;
    CHECK(lcm_generate_controlled(pipe, &req, bad, 2, &im) == LCM_ERR_INVALID_ARGUMENT);
    CHECK(strncmp(lcm_last_error(), "controlnets[1].end", 18) == 0);
    bad[1] = cn;
    bad[1].preprocess = "sobel";
    CHECK(lcm_generate_controlled(pipe, &req, bad, 2, &im) == LCM_ERR_INVALID_ARGUMENT);
    CHECK(strncmp(lcm_last_error(), "controlnets[1].preprocess", 25) == 0);
    bad[1] = cn;
    bad[1].image_rgb = NULL;
    CHECK(lcm_generate_controlled(pipe, &req, bad, 2, &im) == LCM_ERR_INVALID_ARGUMENT);
    CHECK(strncmp(lcm_last_error(), "controlnets[1].image_rgb", 24) == 0);
    CHECK(lcm_generate_controlled(pipe, &req, &cn, 1, &im) == LCM_OK);
    CHECK(im->width == 64 && im->height == 64 && im->count == 1);
    write_images(argv[3], "controlnet.rgb", im);
    lcm_free_images(im);
    cn.image_rgb = control80;
    cn.image_width = 80;
    cn.image_height = 72;
    cn.preprocess = "canny:50:150";
    cn.end = 0.75;
    CHECK(lcm_generate_controlled(pipe, &req, &cn, 1, &im) == LCM_OK);
    write_images(argv[3], "controlnet_canny.rgb", im);
    lcm_free_images(im);
    free(control64);
    free(control80);

    lcm_free_pipeline(pipe);
    printf("ok\n");
    return 0;
}

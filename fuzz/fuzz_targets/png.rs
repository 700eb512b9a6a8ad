//! An `--image` PNG through `read_image_rgb8` and into `InitImage::from_rgb8`.
#![no_main]
use lcm_pipeline::output::read_image_rgb8;
use lcm_pipeline::spec::InitImage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = lcm_fuzz::write("image.png", data);
    if let Ok((w, h, rgb)) = read_image_rgb8(&path) {
        assert_eq!(rgb.len(), w * h * 3);
        let _ = InitImage::from_rgb8(w, h, &rgb, 0.5);
    }
});

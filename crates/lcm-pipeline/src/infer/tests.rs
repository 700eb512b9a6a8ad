use super::*;

fn bytes(name: &str, rows: &[&str]) -> Input {
    let items = rows.iter().map(|s| s.as_bytes().to_vec()).collect();
    Input { name: name.into(), shape: vec![rows.len() as i64, 1], data: Data::Bytes(items) }
}

fn scalar(name: &str, data: Data) -> Input {
    Input { name: name.into(), shape: vec![data.len() as i64, 1], data }
}

fn run(inputs: &[Input]) -> Result<Vec<Request>> {
    let mut next = 100;
    requests(inputs, &Defaults::default(), &mut || {
        next += 1;
        next
    })
}

fn err(inputs: &[Input]) -> String {
    run(inputs).expect_err("an error").to_string()
}

#[test]
fn rows_make_requests_with_defaults() {
    let reqs = run(&[
        bytes("prompt", &["a cat", "a dog"]),
        scalar("seed", Data::Int64(vec![7, -1])),
        scalar("steps", Data::Int32(vec![2, 3])),
        scalar("guidance_scale", Data::Fp32(vec![1.5, 1.0])),
    ])
    .unwrap();
    assert_eq!(reqs.len(), 2);
    assert_eq!((reqs[0].prompt.as_str(), reqs[0].seed, reqs[0].steps, reqs[0].guidance_scale), ("a cat", 7, 2, 1.5));
    assert_eq!((reqs[1].prompt.as_str(), reqs[1].seed, reqs[1].steps), ("a dog", 101, 3));
    assert_eq!((reqs[1].width, reqs[1].height, reqs[1].negative_prompt.as_deref()), (512, 512, None));
    assert!(reqs.iter().all(|r| r.num_images == 1 && r.init_image.is_none()));
}

#[test]
fn image_sets_the_size_and_strength() {
    let (h, w) = (16usize, 24usize);
    let px: Vec<u8> = (0..2 * h * w * 3).map(|i| (i % 251) as u8).collect();
    let image = Input { name: "image".into(), shape: vec![2, h as i64, w as i64, 3], data: Data::Uint8(px) };
    let reqs = run(&[bytes("prompt", &["a", "b"]), image, scalar("strength", Data::Fp32(vec![0.5, 0.25]))]).unwrap();
    assert_eq!((reqs[1].width, reqs[1].height), (w, h));
    let init = reqs[1].init_image.as_ref().unwrap();
    assert_eq!(init.strength, 0.25);
    // Row 1's first pixel is element h·w·3 of the tensor: (1152 % 251) = 148 → 2·148/255 − 1.
    let first = init.pixels.data[0];
    assert!((first - (2.0 * 148.0 / 255.0 - 1.0)).abs() < 1e-6, "{first}");
    let one = Input { name: "image".into(), shape: vec![1, 8, 8, 3], data: Data::Uint8(vec![0; 192]) };
    assert_eq!(
        run(&[bytes("prompt", &["a"]), one]).unwrap()[0].init_image.as_ref().unwrap().strength,
        DEFAULT_STRENGTH
    );
}

#[test]
fn errors_name_the_input() {
    let p = || bytes("prompt", &["x"]);
    assert!(err(&[]).contains("input 'prompt': missing"));
    assert!(err(&[p(), scalar("sampler", Data::Int32(vec![1]))]).contains("input 'sampler': unknown input"));
    assert!(err(&[p(), p()]).contains("input 'prompt': given twice"));
    assert!(
        err(&[p(), scalar("steps", Data::Fp32(vec![4.0]))]).contains("input 'steps': datatype FP32: expected INT32")
    );
    assert!(err(&[p(), scalar("steps", Data::Int32(vec![-2]))]).contains("input 'steps': -2: expected 1 or more"));
    assert!(err(&[p(), scalar("width", Data::Int32(vec![0]))]).contains("input 'width'"));
    assert!(err(&[p(), scalar("seed", Data::Int64(vec![-5]))]).contains("input 'seed'"));
    assert!(err(&[p(), scalar("strength", Data::Fp32(vec![0.5]))]).contains("input 'strength': given without an image"));
    let wide = Input { name: "steps".into(), shape: vec![1, 2], data: Data::Int32(vec![1, 2]) };
    assert!(err(&[p(), wide]).contains("input 'steps': shape [1, 2]: expected [batch, 1]"));
    let short = Input { name: "seed".into(), shape: vec![2, 1], data: Data::Int64(vec![1]) };
    assert!(err(&[p(), short]).contains("input 'seed': shape [2, 1] but 1 elements"));
    assert!(err(&[p(), scalar("seed", Data::Int64(vec![1, 2]))]).contains("batch dimension 2; the other inputs have 1"));
    let gray = Input { name: "image".into(), shape: vec![1, 8, 8, 1], data: Data::Uint8(vec![0; 64]) };
    assert!(err(&[p(), gray]).contains("input 'image': shape [1, 8, 8, 1]: expected [batch, any, any, 3]"));
    let latin1 = Input { name: "prompt".into(), shape: vec![1, 1], data: Data::Bytes(vec![vec![0xff]]) };
    assert!(err(&[latin1]).contains("input 'prompt': row 0 is not UTF-8"));
    let image = Input { name: "image".into(), shape: vec![1, 8, 8, 3], data: Data::Uint8(vec![0; 192]) };
    assert!(err(&[p(), image, scalar("width", Data::Int32(vec![16]))]).contains("input 'image': 8x8 differs"));
}

#[test]
fn raw_buffers_decode_little_endian() {
    let mut raw = Vec::new();
    for s in ["héllo", ""] {
        raw.extend_from_slice(&(s.len() as u32).to_le_bytes());
        raw.extend_from_slice(s.as_bytes());
    }
    assert_eq!(Data::from_raw("prompt", DataType::Bytes, &raw).unwrap(), Data::Bytes(vec!["héllo".into(), vec![]]));
    let e = Data::from_raw("prompt", DataType::Bytes, &raw[..5]).unwrap_err().to_string();
    assert!(e.contains("input 'prompt': BYTES element 0 says 6 bytes; 1 remain"), "{e}");
    assert_eq!(Data::from_raw("seed", DataType::Int64, &(-3i64).to_le_bytes()).unwrap(), Data::Int64(vec![-3]));
    assert_eq!(Data::from_raw("g", DataType::Fp32, &1.5f32.to_le_bytes()).unwrap(), Data::Fp32(vec![1.5]));
    assert!(Data::from_raw("steps", DataType::Int32, &[1, 2, 3]).unwrap_err().to_string().contains("input 'steps'"));
}

#[test]
fn the_contract_names_every_type_once() {
    for d in DataType::ALL {
        assert_eq!(DataType::parse(d.name()), Some(d));
    }
    assert_eq!(DataType::parse("FP16"), None);
    let names: Vec<_> = INPUTS.iter().map(|s| s.name).collect();
    assert!(INPUTS.iter().enumerate().all(|(k, s)| !names[..k].contains(&s.name)), "{names:?}");
    assert_eq!(INPUTS.iter().filter(|s| s.required).map(|s| s.name).collect::<Vec<_>>(), ["prompt"]);
}

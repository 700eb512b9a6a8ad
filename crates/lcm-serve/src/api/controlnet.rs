//! A1111's ControlNet extension on img2img/txt2img: `alwayson_scripts.controlnet.args[]` read into the
//! pipeline's ControlNet units, every refusal naming the unit's JSON path.

use super::*;

/// `alwayson_scripts`: `{}`, or `{"controlnet": {"args": [UNIT, …]}}` (the script's name in any case,
/// as A1111 matches it); any other script is refused by name.
pub(super) fn alwayson_scripts(
    v: &Value,
    limits: &Limits,
    dir: &ControlNetDir,
    width: usize,
    height: usize,
) -> Result<(Vec<ControlUnit>, Vec<ControlChoice>), ApiError> {
    const F: &str = "alwayson_scripts";
    let Value::Object(scripts) = v else {
        return Err(ApiError::bad(
            F,
            format!("expected an object of scripts, {{\"controlnet\": {{\"args\": [...]}}}}, got {}", kind(v)),
        ));
    };
    let mut keys: Vec<&String> = scripts.keys().collect();
    keys.sort();
    let mut out = (Vec::new(), Vec::new());
    let mut seen = false;
    for k in keys {
        let field = format!("{F}.{k}");
        if !k.eq_ignore_ascii_case("controlnet") {
            return Err(ApiError::bad(
                &field,
                "not supported by lcm (the one always-on script it runs is `controlnet`)",
            ));
        }
        if std::mem::replace(&mut seen, true) {
            return Err(ApiError::bad(&field, "the controlnet script twice (its name in two spellings)"));
        }
        let script = &scripts[k.as_str()];
        if script.is_null() {
            continue;
        }
        let Value::Object(o) = script else {
            return Err(ApiError::bad(
                &field,
                format!("expected {{\"args\": [ControlNet units]}}, got {}", kind(script)),
            ));
        };
        if let Some(key) = o.keys().filter(|key| *key != "args").min() {
            return Err(ApiError::bad(format!("{field}.{key}"), "not supported (the script takes `args`)"));
        }
        let args_field = format!("{field}.args");
        out = match o.get("args") {
            None | Some(Value::Null) => (Vec::new(), Vec::new()),
            Some(Value::Array(args)) => control_units(args, &args_field, limits, dir, width, height)?,
            Some(other) => {
                return Err(ApiError::bad(
                    &args_field,
                    format!("expected an array of ControlNet units, got {}", kind(other)),
                ))
            }
        };
    }
    Ok(out)
}

/// The keys of an A1111 ControlNet unit lcm reads (null values count as absent, for any key).
const CONTROL_UNIT_KEYS: &[&str] = &[
    "enabled",
    "image",
    "input_image",
    "model",
    "weight",
    "guidance_start",
    "guidance_end",
    "module",
    "threshold_a",
    "threshold_b",
    "resize_mode",
    "pixel_perfect",
    "processor_res",
    "control_mode",
    "low_vram",
    "lowvram",
    "guessmode",
    "save_detected_map",
];

/// The A1111 ControlNet extension's units (`args`, whose JSON path is `field`) for a `width`x`height`
/// output: the enabled ones (`enabled` defaults to true; a disabled unit is skipped whole, as A1111
/// does), at most [`MAX_CONTROLNETS`], as the pipeline's [`ControlUnit`]s.
pub(super) fn control_units(
    args: &[Value],
    field: &str,
    limits: &Limits,
    dir: &ControlNetDir,
    width: usize,
    height: usize,
) -> Result<(Vec<ControlUnit>, Vec<ControlChoice>), ApiError> {
    let mut units = Vec::new();
    let mut choices = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let Value::Object(obj) = arg else {
            return Err(ApiError::bad(
                &at,
                format!("expected a ControlNet unit, {{\"image\": PNG, \"model\": NAME, …}}, got {}", kind(arg)),
            ));
        };
        match obj.get("enabled") {
            None | Some(Value::Null) | Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => continue,
            Some(v) => {
                return Err(ApiError::bad(format!("{at}.enabled"), format!("expected a boolean, got {}", kind(v))))
            }
        }
        if dir.dir.is_none() {
            return Err(ApiError::bad(
                &at,
                "ControlNet units need a server started with --controlnet-dir (this one offers no ControlNets)",
            ));
        }
        if units.len() == MAX_CONTROLNETS {
            return Err(ApiError::bad(
                field,
                format!("more than {MAX_CONTROLNETS} enabled units: at most {MAX_CONTROLNETS}"),
            ));
        }
        let (unit, choice) = control_unit(obj, &at, limits, dir, width, height)?;
        units.push(unit);
        choices.push(choice);
    }
    Ok((units, choices))
}

/// A number in `lo..=hi` as f64 (`guidance_start`/`guidance_end` are compared with i/n as diffusers
/// compares Python floats, so they are not rounded to f32 on the way).
pub(super) fn f64_in(f: &Fields, key: &str, at: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    let Some(v) = f.get(key) else { return Ok(None) };
    match v.as_f64() {
        Some(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(Some(x)),
        Some(_) => Err(ApiError::bad(format!("{at}.{key}"), format!("{v}: expected a number in {lo}..={hi}"))),
        None => Err(ApiError::bad(format!("{at}.{key}"), format!("expected a number, got {}", kind(v)))),
    }
}

/// A boolean, or a refusal naming `at.key`.
pub(super) fn bool_at(f: &Fields, key: &str, at: &str) -> Result<Option<bool>, ApiError> {
    match f.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::bad(format!("{at}.{key}"), format!("expected a boolean, got {}", kind(v)))),
    }
}

/// One enabled unit (`at` its JSON path).
pub(super) fn control_unit(
    obj: &Map<String, Value>,
    at: &str,
    limits: &Limits,
    dir: &ControlNetDir,
    width: usize,
    height: usize,
) -> Result<(ControlUnit, ControlChoice), ApiError> {
    let key_at = |k: &str| format!("{at}.{k}");
    let mut unknown: Vec<&String> =
        obj.iter().filter(|(k, v)| !v.is_null() && !CONTROL_UNIT_KEYS.contains(&k.as_str())).map(|(k, _)| k).collect();
    unknown.sort();
    if let Some(k) = unknown.first() {
        return Err(ApiError::bad(
            key_at(k),
            format!("not supported by lcm's ControlNet units (supported: {})", CONTROL_UNIT_KEYS.join(", ")),
        ));
    }
    let f = Fields { obj };

    // The model, by name: never a path.
    let model = f.string("model", 256).map_err(|e| e.with_field(&key_at("model")))?;
    let model = model.ok_or_else(|| {
        ApiError::bad(
            key_at("model"),
            "required: a ControlNet's name from --controlnet-dir (GET /controlnet/model_list)",
        )
    })?;
    let (name, path) = dir.choose(&model).map_err(|m| ApiError::bad(key_at("model"), m))?;

    let weight = f
        .float("weight", -MAX_CONTROL_WEIGHT, MAX_CONTROL_WEIGHT)
        .map_err(|e| e.with_field(&key_at("weight")))?
        .unwrap_or(1.0);
    let start = f64_in(&f, "guidance_start", at, 0.0, 1.0)?.unwrap_or(0.0);
    if start >= 1.0 {
        return Err(ApiError::bad(key_at("guidance_start"), format!("{start}: expected a value in [0, 1)")));
    }
    let end = f64_in(&f, "guidance_end", at, 0.0, 1.0)?.unwrap_or(1.0);
    if end <= start {
        return Err(ApiError::bad(
            key_at("guidance_end"),
            format!("{end}: expected a value in ({start}, 1] (after guidance_start)"),
        ));
    }

    // The preprocessor and its thresholds (A1111's threshold_a / threshold_b; -1: the default).
    let module = f.string("module", 64).map_err(|e| e.with_field(&key_at("module")))?;
    let module = module.unwrap_or_else(|| "none".into());
    let pre = match module.to_ascii_lowercase().as_str() {
        "none" => {
            // Unused without a preprocessor (A1111 sends its slider values anyway): numbers only.
            for k in ["threshold_a", "threshold_b"] {
                f64_in(&f, k, at, f64::MIN, f64::MAX)?;
            }
            ControlPreprocess::None
        }
        "canny" => {
            let threshold = |k: &str, default: f64| -> Result<f64, ApiError> {
                match f64_in(&f, k, at, f64::MIN, f64::MAX)? {
                    None | Some(-1.0) => Ok(default),
                    Some(t) if (0.0..=255.0).contains(&t) => Ok(t),
                    Some(t) => Err(ApiError::bad(
                        key_at(k),
                        format!("{t}: expected a Canny threshold in 0..=255 (or -1 for {default})"),
                    )),
                }
            };
            ControlPreprocess::Canny { low: threshold("threshold_a", 100.0)?, high: threshold("threshold_b", 200.0)? }
        }
        _ => {
            let shown: String = module.chars().take(64).collect();
            return Err(ApiError::bad(
                key_at("module"),
                format!(
                    "`{shown}`: lcm's preprocessors are {} (GET /controlnet/module_list); preprocess the image \
                     yourself and send module \"none\"",
                    crate::controlnets::MODULES.join(", ")
                ),
            ));
        }
    };
    let canny = matches!(pre, ControlPreprocess::Canny { .. });

    // Settings lcm accepts only where they change nothing.
    match f.get("control_mode") {
        None => {}
        Some(v) if v.as_u64() == Some(0) || v.as_str() == Some("Balanced") => {}
        Some(v) => {
            return Err(ApiError::bad(
                key_at("control_mode"),
                format!(
                    "{v}: lcm runs ControlNets as diffusers does, A1111's \"Balanced\" (0); the prompt- or \
                     ControlNet-weighted modes are not supported"
                ),
            ))
        }
    }
    if bool_at(&f, "guessmode", at)? == Some(true) {
        return Err(ApiError::bad(key_at("guessmode"), "true: guess mode is not supported"));
    }
    if bool_at(&f, "save_detected_map", at)? == Some(true) {
        return Err(ApiError::bad(
            key_at("save_detected_map"),
            "true: lcm returns the generated images only, never the preprocessed map",
        ));
    }
    // A memory hint: the images do not depend on it.
    bool_at(&f, "low_vram", at)?;
    bool_at(&f, "lowvram", at)?;

    // The image, at any size within --max-size.
    let (image_key, v) = match (f.get("image"), f.get("input_image")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                key_at("input_image"),
                "give `image` or `input_image` (its older name), not both",
            ))
        }
        (Some(v), None) => ("image", v),
        (None, Some(v)) => ("input_image", v),
        (None, None) => return Err(ApiError::bad(key_at("image"), "required: the control image, a base64 PNG")),
    };
    let image_field = key_at(image_key);
    let Value::String(s) = v else {
        return Err(ApiError::bad(&image_field, format!("expected a base64 PNG string, got {}", kind(v))));
    };
    let bytes = base64_bytes(s, &image_field)?;
    let (w, h, rgb) =
        crate::png::decode_control_rgb8(&bytes, limits.size).map_err(|m| ApiError::bad(&image_field, m))?;

    let same_size = (w, h) == (width, height);
    let same_aspect = w * height == h * width;
    if let Some(v) = f.get("resize_mode") {
        let mode = match (v.as_u64(), v.as_str()) {
            (Some(0), _) | (_, Some("Just Resize")) => 0,
            (Some(1), _) | (_, Some("Crop and Resize" | "Inner Fit (Scale to Fit)" | "Scale to Fit (Inner Fit)")) => 1,
            (Some(2), _) | (_, Some("Resize and Fill" | "Outer Fit (Shrink to Fit)" | "Envelope (Outer Fit)")) => 2,
            _ => {
                return Err(ApiError::bad(
                    key_at("resize_mode"),
                    format!("{v}: expected \"Just Resize\" (0), \"Crop and Resize\" (1) or \"Resize and Fill\" (2)"),
                ))
            }
        };
        if mode != 0 && !same_aspect {
            return Err(ApiError::bad(
                key_at("resize_mode"),
                format!(
                    "{v}: the control image is {w}x{h} and the output {width}x{height}; lcm stretches it to the \
                     output's size (\"Just Resize\"): crop or pad it to the output's aspect ratio first, or send \
                     \"Just Resize\""
                ),
            ));
        }
    }
    let pixel_perfect = bool_at(&f, "pixel_perfect", at)?.unwrap_or(false);
    if canny && pixel_perfect && !same_size {
        return Err(ApiError::bad(
            key_at("pixel_perfect"),
            format!(
                "true: lcm's canny runs at the control image's own size ({w}x{h}), not the output's \
                 ({width}x{height}); send the image at the output's size, or pixel_perfect false"
            ),
        ));
    }
    if let Some(res) = f64_in(&f, "processor_res", at, f64::MIN, f64::MAX)? {
        let short = w.min(h) as f64;
        if canny && !pixel_perfect && res != -1.0 && res != short {
            return Err(ApiError::bad(
                key_at("processor_res"),
                format!(
                    "{res}: lcm's canny runs at the control image's own resolution (short side {short}): send -1 \
                     or {short}, or resize the image"
                ),
            ));
        }
    }

    let rgb = pre.apply(&rgb, w, h).map_err(|e| ApiError::bad(&image_field, invalid_msg(&e)))?;
    let image =
        ControlUnit::image_at(w, h, &rgb, width, height).map_err(|e| ApiError::bad(&image_field, invalid_msg(&e)))?;
    let unit = ControlUnit { model: path.clone(), image, scale: weight, start, end };
    let choice =
        ControlChoice { name, path, field: at.to_string(), image_key, module: pre.to_string(), weight, start, end };
    Ok((unit, choice))
}

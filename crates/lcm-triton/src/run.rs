//! One `execute`: the requests Triton's dynamic batcher handed over, each already turned into its
//! rows ([`lcm_pipeline::infer::requests`]), run as few generations as the batching rule allows
//! ([`Request::batches_with`]) — and never one request's error in its neighbours' answers.

use lcm::Engine;
use lcm_core::Result;
use lcm_pipeline::infer::INPUTS;
use lcm_pipeline::spec::Request;

/// One Triton request's images: one per row, 8-bit RGB `[height, width, 3]` each.
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<Vec<u8>>,
}

/// One Triton request's answer: its images or its error.
pub type Answer = Result<Images>;

/// Runs every request that parsed and validates; returns one answer per request, in their order.
/// Rows of compatible requests share one `generate_batch` of at most `max_images` images (a request
/// never splits). A request that fails validation gets its error alone; a generation that fails
/// with several requests is retried one request at a time, so only the request that fails gets the
/// error.
pub fn run(engine: &mut Engine, parsed: Vec<Result<Vec<Request>>>, max_images: usize) -> Vec<Answer> {
    let mut answers: Vec<Option<Answer>> = Vec::with_capacity(parsed.len());
    let mut ok: Vec<(usize, Vec<Request>)> = Vec::new();
    for (i, p) in parsed.into_iter().enumerate() {
        match p.and_then(|rows| validate(engine, &rows).map(|_| rows)) {
            Ok(rows) => {
                ok.push((i, rows));
                answers.push(None);
            }
            Err(e) => answers.push(Some(Err(e))),
        }
    }
    for group in groups(&ok, max_images) {
        let rows: Vec<Request> = group.iter().flat_map(|&k| ok[k].1.iter().cloned()).collect();
        match generate(engine, &rows) {
            Ok(mut images) => {
                for &k in &group {
                    let rest = images.split_off(ok[k].1.len());
                    answers[ok[k].0] = Some(Ok(self::images(&ok[k].1, std::mem::replace(&mut images, rest))));
                }
            }
            Err(e) if group.len() == 1 => answers[ok[group[0]].0] = Some(Err(e)),
            Err(_) => {
                for &k in &group {
                    answers[ok[k].0] = Some(generate(engine, &ok[k].1).map(|rgb| images(&ok[k].1, rgb)));
                }
            }
        }
    }
    answers.into_iter().map(|a| a.expect("every request is answered")).collect()
}

fn images(rows: &[Request], rgb: Vec<Vec<u8>>) -> Images {
    Images { width: rows[0].width, height: rows[0].height, rgb }
}

/// Each row against the model (sizes, steps within its sampler's most), before any work; one
/// request's rows share a size (its output is one tensor).
fn validate(engine: &Engine, rows: &[Request]) -> Result<()> {
    if let Some(r) = rows.iter().find(|r| (r.width, r.height) != (rows[0].width, rows[0].height)) {
        let msg = format!(
            "rows ask for {}x{} and {}x{}: one request's rows share a size",
            rows[0].width, rows[0].height, r.width, r.height
        );
        return Err(lcm_core::Error::invalid("input 'width'", msg));
    }
    lcm::with_pipeline!(engine, p => {
        for r in rows {
            r.validate(p.max_steps(r.sampler.as_ref())?).map_err(as_input)?;
        }
        Ok(())
    })
}

/// A request field's error (`width: ...`) as the input's (`input 'width': ...`) where the field is
/// an input of the contract, so every error a client gets names what it sent.
fn as_input(e: lcm_core::Error) -> lcm_core::Error {
    match e {
        lcm_core::Error::Invalid { what, msg } if INPUTS.iter().any(|i| i.name == what) => {
            lcm_core::Error::invalid(format!("input '{what}'"), msg)
        }
        e => e,
    }
}

/// Requests (indices into `ok`) that run together: each joins the first group whose first row
/// batches with its rows and that has room, else starts one. Order within a group is arrival order.
fn groups(ok: &[(usize, Vec<Request>)], max_images: usize) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Vec<usize>, usize)> = Vec::new();
    for (k, (_, rows)) in ok.iter().enumerate() {
        let fits = |g: &&mut (Vec<usize>, usize)| {
            let lead = &ok[g.0[0]].1[0];
            g.1 + rows.len() <= max_images && rows.iter().all(|r| r.batches_with(lead))
        };
        match groups.iter_mut().find(fits) {
            Some(g) => {
                g.0.push(k);
                g.1 += rows.len();
            }
            None => groups.push((vec![k], rows.len())),
        }
    }
    groups.into_iter().map(|(g, _)| g).collect()
}

/// The rows' images in row order (each row one image): runs of rows that batch together, each one
/// generation (one request's rows may differ, e.g. in steps).
fn generate(engine: &mut Engine, rows: &[Request]) -> Result<Vec<Vec<u8>>> {
    let mut images = Vec::with_capacity(rows.len());
    let mut rest = rows;
    while let Some(lead) = rest.first() {
        let n = rest.iter().take_while(|r| r.batches_with(lead)).count();
        let outs = lcm::with_pipeline!(engine, p => p.generate_batch(&rest[..n], &mut |_| {}, None))?;
        images.extend(outs.iter().flat_map(|o| (0..o.images.shape[0]).map(|i| o.rgb8(i))));
        rest = &rest[n..];
    }
    Ok(images)
}

#[cfg(test)]
mod tests;

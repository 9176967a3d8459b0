//! The request mix of a load run (issue 15 item 3): which request each send is, sans-IO.
//!
//! A [`RequestMix`] is built from a load job's requests (`pb::LoadRequest`, filled from a
//! scenario by the controller, or by `agent load --scenario FILE`) and its knobs: each request's `{{NAME}}` templates (path, header values, body) are rendered once, with
//! the knobs ([`meshlat_proto::scenario::render`]); an empty path is the target URL's own path,
//! any other is appended to the target's origin. The default mix ([`RequestMix::target_get`]) is
//! one `GET` of the target URL, what a run without requests sends.
//!
//! Requests are chosen by **smooth weighted round-robin** (nginx's): deterministic, and in every
//! window of `total weight` consecutive picks request `i` is chosen exactly `weight_i` times,
//! spread out rather than in runs (weights 3:1 pick `A A B A`, `A A B A`, ...). No random
//! numbers, so tests can count exactly.
//!
//! [`classify`] turns a response's status into the recorded result with the request's
//! `expect_status`: when it is set, any other status counts as `status_other` (429 always as
//! rate-limited); when it is 0, statuses count by class (2xx, 3xx, ...).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use meshlat_proto::pb;
use meshlat_proto::scenario;

use super::stats::RequestResult;

/// The requests of a run and the round-robin choosing among them.
#[derive(Debug)]
pub struct RequestMix {
    requests: Vec<MixRequest>,
    /// `None` with one request (no lock per send then).
    picker: Option<Mutex<SmoothWrr>>,
}

/// One request of a mix, rendered.
#[derive(Clone, Debug)]
pub struct MixRequest {
    /// Method.
    pub method: Method,
    /// Path and query (`None`: the target URL's own).
    pub path: Option<http::Uri>,
    /// Extra headers (they replace the run's headers of the same name).
    pub headers: HeaderMap,
    /// Body (may be empty).
    pub body: Bytes,
    /// Weight (1 or more).
    pub weight: u32,
    /// The status of a success; 0: any 2xx.
    pub expect_status: u16,
    /// For logs.
    pub label: String,
}

/// Why a mix cannot be built; the field path names the request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct MixError {
    /// E.g. `requests[2].path`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// Smooth weighted round-robin over weights (all above 0): each pick adds every weight to its
/// counter, takes the largest counter and subtracts the total from it.
#[derive(Clone, Debug)]
pub struct SmoothWrr {
    weights: Vec<i64>,
    current: Vec<i64>,
    total: i64,
}

// === impl RequestMix ===

impl RequestMix {
    /// One `GET` of the target URL: the mix of a run without requests.
    pub fn target_get() -> Self {
        RequestMix {
            requests: vec![MixRequest {
                method: Method::GET,
                path: None,
                headers: HeaderMap::new(),
                body: Bytes::new(),
                weight: 1,
                expect_status: 0,
                label: String::new(),
            }],
            picker: None,
        }
    }

    /// The mix of `requests` with `knobs` (module docs). No requests: the
    /// default mix ([`RequestMix::target_get`]).
    ///
    /// # Errors
    ///
    /// [`MixError`] naming the request field: an unknown method, a template naming no knob, a
    /// rendered path, header or body that is not valid, more than
    /// [`scenario::MAX_REQUESTS`] requests, an `expect_status` outside 100..=599.
    pub fn new(
        requests: &[pb::LoadRequest],
        knobs: &HashMap<String, String>,
    ) -> Result<Self, MixError> {
        if requests.is_empty() {
            return Ok(Self::target_get());
        }
        if requests.len() > scenario::MAX_REQUESTS {
            return Err(MixError {
                field: "requests".into(),
                reason: format!(
                    "{} entries exceed the limit of {}",
                    requests.len(),
                    scenario::MAX_REQUESTS
                ),
            });
        }
        let get = |n: &str| knobs.get(n).map(String::as_str);
        let mut out = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            let bad = |what: &str, reason: String| MixError {
                field: format!("requests[{i}]{what}"),
                reason,
            };
            let method = if r.method.is_empty() {
                Method::GET
            } else if scenario::METHODS.contains(&r.method.as_str()) {
                Method::from_bytes(r.method.as_bytes())
                    .map_err(|e| bad(".method", e.to_string()))?
            } else {
                return Err(bad(
                    ".method",
                    format!(
                        "{:?} is not one of {}",
                        r.method,
                        scenario::METHODS.join(", ")
                    ),
                ));
            };
            let path = if r.path.is_empty() {
                None
            } else {
                let p = scenario::render(&r.path, get).map_err(|e| bad(".path", e))?;
                if !p.starts_with('/') {
                    return Err(bad(".path", format!("{p:?} must start with '/'")));
                }
                Some(
                    p.parse::<http::Uri>()
                        .map_err(|e| bad(".path", format!("{p:?}: {e}")))?,
                )
            };
            let mut headers = HeaderMap::new();
            let mut names: Vec<(&String, &String)> = r.headers.iter().collect();
            names.sort();
            for (k, v) in names {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| bad(&format!(".headers.{k}"), "not a header name".into()))?;
                let v = scenario::render(v, get).map_err(|e| bad(&format!(".headers.{k}"), e))?;
                let mut value = HeaderValue::from_str(&v).map_err(|_| {
                    bad(
                        &format!(".headers.{k}"),
                        "the value holds characters a header cannot".into(),
                    )
                })?;
                // Scenario headers may carry tokens.
                value.set_sensitive(true);
                headers.append(name, value);
            }
            let body = scenario::render(&r.body, get).map_err(|e| bad(".body", e))?;
            if body.is_empty() && matches!(method, Method::POST | Method::PUT | Method::PATCH) {
                // hyper sends no length for an empty body; some servers want one on these.
                headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            }
            let expect_status = match r.expect_status {
                0 => 0,
                s @ 100..=599 => s as u16,
                s => {
                    return Err(bad(
                        ".expect_status",
                        format!("{s} is not 0 or a status 100 to 599"),
                    ));
                }
            };
            out.push(MixRequest {
                method,
                path,
                headers,
                body: Bytes::from(body),
                weight: r.weight.clamp(1, scenario::MAX_WEIGHT),
                expect_status,
                label: r.label.clone(),
            });
        }
        let picker = (out.len() > 1)
            .then(|| Mutex::new(SmoothWrr::new(out.iter().map(|r| r.weight).collect())));
        Ok(RequestMix {
            requests: out,
            picker,
        })
    }

    /// The requests, in order.
    pub fn requests(&self) -> &[MixRequest] {
        &self.requests
    }

    /// The index of the next request to send.
    pub fn pick(&self) -> usize {
        match &self.picker {
            None => 0,
            Some(p) => p.lock().unwrap_or_else(PoisonError::into_inner).pick(),
        }
    }
}

impl Clone for RequestMix {
    fn clone(&self) -> Self {
        RequestMix {
            requests: self.requests.clone(),
            picker: self
                .picker
                .as_ref()
                .map(|p| Mutex::new(p.lock().unwrap_or_else(PoisonError::into_inner).clone())),
        }
    }
}

impl Default for RequestMix {
    fn default() -> Self {
        Self::target_get()
    }
}

// === impl SmoothWrr ===

impl SmoothWrr {
    /// Round-robin over `weights` (each at least 1; a 0 is taken as 1).
    pub fn new(weights: Vec<u32>) -> Self {
        let weights: Vec<i64> = weights.into_iter().map(|w| i64::from(w.max(1))).collect();
        SmoothWrr {
            current: vec![0; weights.len()],
            total: weights.iter().sum(),
            weights,
        }
    }

    /// The next index.
    pub fn pick(&mut self) -> usize {
        let mut best = 0;
        for i in 0..self.current.len() {
            self.current[i] += self.weights[i];
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        if let Some(c) = self.current.get_mut(best) {
            *c -= self.total;
        }
        best
    }
}

/// The recorded result of a response with `status` to a request expecting `expect` (module
/// docs): 429 is always rate-limited; with `expect` set, any other status is unexpected.
pub fn classify(expect: u16, status: u16) -> RequestResult {
    if expect != 0 && status != expect && status != 429 {
        RequestResult::Unexpected(status)
    } else {
        RequestResult::Status(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, weight: u32) -> pb::LoadRequest {
        pb::LoadRequest {
            path: path.into(),
            weight,
            ..Default::default()
        }
    }

    #[test]
    fn smooth_round_robin_is_exact_and_spread() {
        let mut w = SmoothWrr::new(vec![3, 1]);
        let picks: Vec<usize> = (0..8).map(|_| w.pick()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 0, 0, 1, 0]);
        let mut w = SmoothWrr::new(vec![5, 1, 1, 0]);
        let mut counts = [0; 4];
        for _ in 0..8 * 100 {
            counts[w.pick()] += 1;
        }
        assert_eq!(counts, [500, 100, 100, 100], "0 is taken as 1");
    }

    #[test]
    fn templates_render_and_the_default_is_the_target() {
        let knobs: HashMap<String, String> = [
            ("ID".to_string(), "42".to_string()),
            ("TOK".into(), "abc".into()),
        ]
        .into();
        let mut r = req("/items/{{ID}}?q={{ID}}", 2);
        r.method = "POST".into();
        r.headers = [("X-Token".to_string(), "t-{{TOK}}".to_string())].into();
        r.body = "{\"id\": {{ID}}}".into();
        r.expect_status = 201;
        let mix = RequestMix::new(&[r, req("", 1)], &knobs).unwrap();
        let a = &mix.requests()[0];
        assert_eq!(a.method, Method::POST);
        assert_eq!(a.path.as_ref().unwrap(), "/items/42?q=42");
        assert_eq!(a.headers["x-token"], "t-abc");
        assert_eq!(a.body, Bytes::from_static(b"{\"id\": 42}"));
        assert_eq!(a.expect_status, 201);
        assert!(mix.requests()[1].path.is_none(), "empty path: the target's");
        assert_eq!(RequestMix::new(&[], &knobs).unwrap().requests().len(), 1);
    }

    #[test]
    fn bad_requests_name_the_field() {
        let none = HashMap::new();
        let mut m = req("/", 1);
        m.method = "FETCH".into();
        for (r, want) in [
            (req("/{{NOPE}}", 1), "requests[0].path: no knob NOPE"),
            (m, "requests[0].method"),
            (
                pb::LoadRequest {
                    path: "/".into(),
                    expect_status: 42,
                    ..Default::default()
                },
                "requests[0].expect_status",
            ),
            (req("nope", 1), "must start with '/'"),
        ] {
            let e = RequestMix::new(&[r], &none).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn expect_status_decides_what_counts_as_other() {
        assert_eq!(classify(0, 500), RequestResult::Status(500));
        assert_eq!(classify(201, 201), RequestResult::Status(201));
        assert_eq!(classify(201, 200), RequestResult::Unexpected(200));
        assert_eq!(classify(500, 429), RequestResult::Status(429));
        assert_eq!(classify(404, 404), RequestResult::Status(404));
    }
}

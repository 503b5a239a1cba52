//! Decisions: which window refused, each window's standing, and the `X-RateLimit-*` headers.

/// Which window a standing or a refusal is about. Also a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowKind {
    /// The key's short window.
    Short,
    /// The key's medium window.
    Medium,
    /// The client IP's window.
    Ip,
}

impl WindowKind {
    /// `short`, `medium` or `ip`.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::Short => "short",
            WindowKind::Medium => "medium",
            WindowKind::Ip => "ip",
        }
    }
}

/// The standing of one window after a decision, in `X-RateLimit-*` terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// The window's configured limit.
    pub limit: u32,
    /// Requests that would be allowed right now (after this one, if it was allowed).
    pub remaining: u32,
    /// Seconds until the window is fully replenished, rounded up (0 when it already is).
    pub reset_s: u64,
}

/// The outcome of [`RateLimiter::check`].
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed. When false, no window was charged.
    pub allowed: bool,
    /// When refused: seconds (≥ 1, rounded up) until every refusing window would allow it.
    pub retry_after_s: Option<u64>,
    /// When refused: the window that made the client wait longest (a bounded metric label).
    pub limited_by: Option<WindowKind>,
    /// The key's short window, when configured.
    pub short: Option<Standing>,
    /// The key's medium window, when configured.
    pub medium: Option<Standing>,
    /// The client's IP window, when configured.
    pub ip: Option<Standing>,
}

/// A refused request. `respond` maps it to 429 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// A window refused the request; nothing was charged.
    #[error("rate limit exceeded ({} window); retry after {retry_after_s} s", .window.as_str())]
    Limited { window: WindowKind, retry_after_s: u64 },
}

impl RateLimitError {
    /// Every code [`RateLimitError::code`] returns.
    pub const CODES: &'static [&'static str] = &["rate_limited"];

    /// The stable code in the error body and the metric label.
    pub fn code(&self) -> &'static str {
        match self {
            RateLimitError::Limited { .. } => "rate_limited",
        }
    }

    /// One value of every variant, for the tests that hold `code` against
    /// [`RateLimitError::CODES`].
    #[cfg(test)]
    pub(crate) fn samples() -> Vec<RateLimitError> {
        let all = vec![RateLimitError::Limited { window: WindowKind::Short, retry_after_s: 1 }];
        // No `_` arm: a new variant does not compile until it is named here (and added above).
        all.iter().for_each(|e| match e {
            RateLimitError::Limited { .. } => {}
        });
        all
    }

    /// The `Retry-After` value in seconds.
    pub fn retry_after_s(&self) -> u64 {
        match self {
            RateLimitError::Limited { retry_after_s, .. } => *retry_after_s,
        }
    }
}

/// Every header [`Decision::headers`] can emit, for `Access-Control-Expose-Headers` (browsers
/// hide response headers from scripts unless they are listed there).
pub const EXPOSE_HEADERS: [&str; 10] = [
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-RateLimit-Limit-short",
    "X-RateLimit-Remaining-short",
    "X-RateLimit-Reset-short",
    "X-RateLimit-Limit-medium",
    "X-RateLimit-Remaining-medium",
    "X-RateLimit-Reset-medium",
    "Retry-After",
];

/// [`EXPOSE_HEADERS`] as one header value.
pub const EXPOSE_HEADERS_VALUE: &str = "X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, \
     X-RateLimit-Limit-short, X-RateLimit-Remaining-short, X-RateLimit-Reset-short, \
     X-RateLimit-Limit-medium, X-RateLimit-Remaining-medium, X-RateLimit-Reset-medium, Retry-After";

impl Decision {
    /// A decision with no window configured: allowed, no headers.
    pub const UNLIMITED: Decision =
        Decision { allowed: true, retry_after_s: None, limited_by: None, short: None, medium: None, ip: None };

    /// `Err` when refused, for `?` in the pipeline.
    pub fn result(&self) -> Result<(), RateLimitError> {
        match (self.allowed, self.limited_by) {
            (false, Some(window)) => {
                Err(RateLimitError::Limited { window, retry_after_s: self.retry_after_s.unwrap_or(1) })
            }
            _ => Ok(()),
        }
    }

    /// The most restrictive window (lowest `remaining`, ties to the longer `reset_s`; short
    /// before medium before IP when still tied): what the unsuffixed headers show.
    pub fn headline(&self) -> Option<Standing> {
        let mut best: Option<Standing> = None;
        for s in [self.short, self.medium, self.ip].into_iter().flatten() {
            best = match best {
                Some(b)
                    if (b.remaining, std::cmp::Reverse(b.reset_s)) <= (s.remaining, std::cmp::Reverse(s.reset_s)) =>
                {
                    Some(b)
                }
                _ => Some(s),
            };
        }
        best
    }

    /// Calls `f` with each header name and its integer value, in [`EXPOSE_HEADERS`] order,
    /// without allocating (e.g. into `http::HeaderValue::from(u64)`).
    pub fn for_each_header(&self, mut f: impl FnMut(&'static str, u64)) {
        if let Some(h) = self.headline() {
            f("X-RateLimit-Limit", u64::from(h.limit));
            f("X-RateLimit-Remaining", u64::from(h.remaining));
            f("X-RateLimit-Reset", h.reset_s);
        }
        if let Some(s) = self.short {
            f("X-RateLimit-Limit-short", u64::from(s.limit));
            f("X-RateLimit-Remaining-short", u64::from(s.remaining));
            f("X-RateLimit-Reset-short", s.reset_s);
        }
        if let Some(m) = self.medium {
            f("X-RateLimit-Limit-medium", u64::from(m.limit));
            f("X-RateLimit-Remaining-medium", u64::from(m.remaining));
            f("X-RateLimit-Reset-medium", m.reset_s);
        }
        if !self.allowed {
            f("Retry-After", self.retry_after_s.unwrap_or(1).max(1));
        }
    }

    /// The headers as `(name, value)` pairs; empty when no window is configured.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(EXPOSE_HEADERS.len());
        self.for_each_header(|name, v| out.push((name, v.to_string())));
        out
    }
}

// ---------------------------------------------------------------------------------------------

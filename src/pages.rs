//! The pages wharf answers itself: the dashboard at bare `localhost`, the 404 that lists known
//! names, and error pages that say what happened and what to do. No CORS headers, ever.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::control::Listed;
use crate::forward::ProxyBody;

/// A complete response with a fixed body.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The dashboard: JSON for programs (`Accept: application/json`), HTML for people.
pub fn dashboard(instances: &[Listed], wants_json: bool) -> Response<ProxyBody> {
    if wants_json {
        let body = serde_json::to_vec_pretty(&serde_json::json!({ "instances": instances }))
            .expect("serialises");
        return respond(StatusCode::OK, "application/json", body);
    }
    let rows: String = instances
        .iter()
        .map(|l| {
            let i = &l.instance;
            let port = i.sockets.values().next().map(|a| a.port().to_string()).unwrap_or_default();
            let pid = match (l.alias, i.child_pid) {
                (true, _) => "alias".to_string(),
                (false, Some(child)) => child.to_string(),
                (false, None) => i.pid.to_string(),
            };
            format!(
                "<tr><td><a href=\"{url}\">{name}</a></td><td>{state}</td><td>{pid}</td><td>{port}</td>\
                 <td>{mode}</td><td>{uptime}</td><td>{requests}</td></tr>",
                url = escape(&l.url),
                name = escape(i.name.as_str()),
                state = if l.alias { "alias".into() } else { format!("{:?}", i.state).to_lowercase() },
                mode = i.mode,
                uptime = human_duration(l.uptime_secs),
                requests = l.requests,
            )
        })
        .collect();
    let body = if instances.is_empty() {
        "<p>No instances yet. Start one with <code>wharf run --name NAME -- CMD</code>.</p>"
            .to_string()
    } else {
        format!(
            "<table><tr><th>name</th><th>state</th><th>pid</th><th>port</th><th>mode</th>\
             <th>uptime</th><th>requests</th></tr>{rows}</table>"
        )
    };
    respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        page("wharf", &body),
    )
}

/// 404 for a name nobody registered, with links to the names that are.
pub fn unknown_name(host: &str, instances: &[Listed]) -> Response<ProxyBody> {
    let known: String = instances
        .iter()
        .map(|l| format!("<li><a href=\"{0}\">{0}</a></li>", escape(&l.url)))
        .collect();
    let list = if known.is_empty() {
        "<p>No instances are running.</p>".to_string()
    } else {
        format!("<p>Known names:</p><ul>{known}</ul>")
    };
    let body = format!(
        "<p>No instance is named <b>{}</b>. Start one with \
         <code>wharf run --name NAME -- CMD</code>.</p>{list}",
        escape(host)
    );
    respond(
        StatusCode::NOT_FOUND,
        "text/html; charset=utf-8",
        page("404 unknown name", &body),
    )
}

/// Any other error: the status, what happened, and what to do.
pub fn error(status: StatusCode, what: &str, hint: &str) -> Response<ProxyBody> {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let body = format!("<p>{}</p><p>{}</p>", escape(what), escape(hint));
    respond(status, "text/html; charset=utf-8", page(&title, &body))
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font:15px system-ui,sans-serif;margin:2em auto;max-width:60em;padding:0 1em}}\
         table{{border-collapse:collapse}}td,th{{padding:.3em .8em;text-align:left;border-bottom:1px solid #ddd}}\
         code{{background:#f3f3f3;padding:.1em .3em}}</style></head>\
         <body><h1>{t}</h1>{body}<p><small>wharf</small></p></body></html>\n",
        t = escape(title)
    )
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_formats_durations() {
        assert_eq!(escape("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(61), "1m01s");
        assert_eq!(human_duration(3 * 3600 + 120), "3h02m");
    }

    #[test]
    fn pages_carry_no_cors_headers() {
        for r in [
            dashboard(&[], true),
            dashboard(&[], false),
            unknown_name("x.localhost", &[]),
        ] {
            assert!(
                r.headers()
                    .keys()
                    .all(|k| !k.as_str().starts_with("access-control"))
            );
        }
    }
}

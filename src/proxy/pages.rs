//! The pages wharf answers itself: the dashboard at bare `localhost`, the 404 that names the
//! unknown instance and lists the known ones, the 421 for hosts that are not wharf's, and error
//! pages that say what happened and what to do; each links the dashboard. No CORS headers, ever.

use crate::model::text::{escape, human_duration, shell_words};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::control::protocol::Listed;
use crate::model::name::Name;
use crate::proxy::body::ProxyBody;

/// A complete response with a fixed body.
pub(crate) fn respond(
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
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    response
}

/// The dashboard: JSON for programs (`Accept: application/json`), HTML for people. The HTML
/// brings itself up to date: a small script fetches the page again every few seconds and swaps
/// in the new list, so the rendering lives here only.
pub(crate) fn dashboard(instances: &[Listed], wants_json: bool) -> Response<ProxyBody> {
    if wants_json {
        let body = serde_json::to_vec_pretty(&serde_json::json!({ "instances": instances }))
            .expect("serialises");
        return respond(StatusCode::OK, "application/json", body);
    }
    let list = if instances.is_empty() {
        "<p class=\"empty\">No instances yet. Start one with \
         <code>wharf run --name NAME -- CMD</code>, or <code>wharf up</code> in a project \
         with a wharf.toml.</p>"
            .to_string()
    } else {
        let rows: String = instances.iter().map(dashboard_row).collect();
        format!(
            "<table><thead><tr><th>instance</th><th>state</th><th>command</th><th>logs</th>\
             <th>socket</th><th>activity</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    };
    let count = match instances.len() {
        1 => "1 instance".to_string(),
        n => format!("{n} instances"),
    };
    let body = format!(
        "<p class=\"bar\">{count} <span id=\"live\" class=\"live\">updates by itself</span></p>\
         <div id=\"instances\">{list}</div><script>{REFRESH}</script>"
    );
    let mut response = respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        page("wharf", &body),
    );
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DASHBOARD_CSP),
    );
    response
}

/// Fetch the page again every 2 s and swap the list in place; not while the tab is hidden or
/// the reader is selecting text in it (to copy a command), and say so when the proxy is gone.
const REFRESH: &str = "(function(){var box=document.getElementById('instances'),\
live=document.getElementById('live');function tick(){if(document.hidden)return;\
var s=getSelection();if(s&&!s.isCollapsed&&box.contains(s.anchorNode))return;\
fetch(location.href,{cache:'no-store'}).then(function(r){if(!r.ok)throw r.status;return r.text()})\
.then(function(t){var d=new DOMParser().parseFromString(t,'text/html');\
var n=d.getElementById('instances');if(n)box.innerHTML=n.innerHTML;\
var b=d.querySelector('.bar');if(b)live.parentNode.firstChild.nodeValue=b.firstChild.nodeValue;\
live.textContent='updated '+new Date().toLocaleTimeString();live.className='live'})\
.catch(function(){live.textContent='the proxy is not answering: this list is stale';\
live.className='down'})}setInterval(tick,2000);\
document.addEventListener('visibilitychange',tick)})();";

/// The dashboard runs its own inline script and talks to its own origin only.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";
/// Error pages need nothing but their style.
const PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One instance: where it is, how it is, what it runs, where its output goes, its socket and
/// its traffic; then a warning row if it is reachable from the network.
fn dashboard_row(l: &Listed) -> String {
    let i = &l.instance;
    let url = escape(&l.url);
    let member = i
        .member
        .map(|k| format!(" <span class=\"member\">member {k}</span>"))
        .unwrap_or_default();
    let mut where_ = format!(
        "<a class=\"name\" href=\"{url}\">{name}</a>{member}<div class=\"sub\"><a href=\"{url}\">{url}</a></div>",
        name = escape(i.name.as_str()),
    );
    for sub in i
        .sockets
        .keys()
        .filter(|s| *s != crate::model::ports::MAIN_SOCKET)
    {
        let sub_url = escape(&l.url.replacen("://", &format!("://{sub}."), 1));
        where_ += &format!("<div class=\"sub\"><a href=\"{sub_url}\">{sub_url}</a></div>");
    }
    let state = if l.alias {
        "alias".to_string()
    } else {
        i.state.to_string()
    };
    let mut state_cell = format!("<span class=\"state {state}\">{state}</span>");
    if let Some(exit) = &i.last_exit {
        state_cell += &format!("<div class=\"sub\">last exit: {}</div>", escape(exit));
    }
    let main = i.sockets.get(crate::model::ports::MAIN_SOCKET);
    let (command, logs) = if l.alias {
        (
            "<span class=\"sub\">not started by wharf: <code>wharf alias</code></span>".to_string(),
            "<span class=\"sub\">not wharf's to keep</span>".to_string(),
        )
    } else {
        (command_cell(i), logs_cell(i))
    };
    let addr = main.map(|a| a.to_string()).unwrap_or_default();
    let socket = if l.alias {
        addr
    } else {
        let server = i
            .child_pid
            .map(|pid| format!("<div class=\"sub\">server pid {pid}</div>"))
            .unwrap_or_default();
        format!(
            "{addr}<div class=\"sub\">{mode} mode</div>{server}\
             <div class=\"sub\">wharf pid {pid}</div>",
            mode = i.mode,
            pid = i.pid,
        )
    };
    let activity = format!(
        "up {}<div class=\"sub\">{} request{}</div>",
        human_duration(l.uptime_secs),
        l.requests,
        if l.requests == 1 { "" } else { "s" },
    );
    let warning = match i.exposed {
        None => String::new(),
        Some(addr) => format!(
            "<tr class=\"warn\"><td colspan=\"6\">⚠ <b>{name}</b>: {warning}</td></tr>",
            name = escape(i.name.as_str()),
            warning = escape(&crate::sys::netstat::exposed_warning(addr)),
        ),
    };
    format!(
        "<tr><td class=\"nowrap\">{where_}</td><td>{state_cell}</td><td>{command}</td>\
         <td>{logs}</td><td class=\"nowrap\">{socket}</td><td class=\"nowrap\">{activity}</td></tr>\
         {warning}"
    )
}

fn command_cell(i: &crate::model::instance::Instance) -> String {
    let about = &i.about;
    let mut cell = if about.command.is_empty() {
        "<span class=\"sub\">not known</span>".to_string()
    } else {
        let shown = shell_words(&about.command);
        format!("<code title=\"{0}\">{0}</code>", escape(&shown))
    };
    if let Some(dir) = &about.dir {
        cell += &format!(
            "<div class=\"sub\">in {}</div>",
            escape(&dir.display().to_string())
        );
    }
    if let Some(declared) = &i.declared {
        cell += &format!(
            "<div class=\"sub\">declared in {}</div>",
            escape(&declared.file.display().to_string())
        );
    }
    cell
}

fn logs_cell(i: &crate::model::instance::Instance) -> String {
    match (&i.about.log, &i.declared) {
        (Some(path), Some(_)) => format!(
            "<code class=\"nowrap\">wharf logs {}</code><div class=\"sub\">{}</div>",
            escape(i.name.as_str()),
            escape(&path.display().to_string())
        ),
        (Some(path), None) => format!("<code>{}</code>", escape(&path.display().to_string())),
        (None, _) => "the terminal of <code>wharf run</code>".to_string(),
    }
}

/// 404 for a name nobody registered (`Ok(name)`) or a host wharf never routes (`Err(host)`),
/// with links to the names that are and to the dashboard.
pub(crate) fn unknown_name(
    asked: Result<&Name, (&Name, &str)>,
    instances: &[Listed],
    dashboard: &str,
) -> Response<ProxyBody> {
    let known: String = instances
        .iter()
        .map(|l| format!("<li><a href=\"{0}\">{0}</a></li>", escape(&l.url)))
        .collect();
    let list = if known.is_empty() {
        "<p>No instances are running.</p>".to_string()
    } else {
        format!("<p>Known names:</p><ul>{known}</ul>")
    };
    let what = match asked {
        Ok(name) => format!(
            "<p>No instance is named <b>{name}</b>. Start it with \
             <code>wharf run --name {name} -- CMD</code>, or declare it in wharf.toml and run \
             <code>wharf up</code>.</p>",
            name = escape(name.as_str())
        ),
        Err((name, sub)) => {
            let sockets: Vec<String> = instances
                .iter()
                .filter(|l| &l.instance.name == name)
                .flat_map(|l| l.instance.sockets.keys())
                .filter(|s| *s != crate::model::ports::MAIN_SOCKET)
                .map(|s| format!("<b>{}</b>", escape(s)))
                .collect();
            let has = match sockets.len() {
                0 => "it has no other sockets".to_string(),
                _ => format!("its other sockets are {}", sockets.join(", ")),
            };
            format!(
                "<p>No instance is named <b>{full}</b>, and <b>{name}</b> has no socket named \
                 <b>{sub}</b> ({has}). Start it with <code>wharf run --name {full} -- \
                 CMD</code>.</p>",
                full = escape(&format!("{sub}.{name}")),
                name = escape(name.as_str()),
                sub = escape(sub),
            )
        }
    };
    let body = format!(
        "{what}{list}<p>The dashboard: <a href=\"{0}\">{0}</a></p>",
        escape(dashboard)
    );
    respond(
        StatusCode::NOT_FOUND,
        "text/html; charset=utf-8",
        page("404 unknown name", &body),
    )
}

/// 421 for a host that is not wharf's (an IP address, a real domain): where to go instead.
pub(crate) fn misdirected(host: &str, dashboard: &str) -> Response<ProxyBody> {
    let body = format!(
        "<p><b>{host}</b> is not a local name; wharf routes only NAME.localhost.</p>\
         <p>The instances, and links to each, are on the dashboard: \
         <a href=\"{dashboard}\">{dashboard}</a>. <code>wharf ls</code> lists them too.</p>",
        host = escape(host),
        dashboard = escape(dashboard),
    );
    respond(
        StatusCode::MISDIRECTED_REQUEST,
        "text/html; charset=utf-8",
        page("421 not a local name", &body),
    )
}

/// `[proxy] redirect`: the same request over HTTPS (308 keeps the method and the body).
pub(crate) fn to_https(location: &str) -> Response<ProxyBody> {
    let body = format!(
        "<p>This instance is served over HTTPS: <a href=\"{0}\">{0}</a>.</p>",
        escape(location)
    );
    let mut response = respond(
        StatusCode::PERMANENT_REDIRECT,
        "text/html; charset=utf-8",
        page("308 moved to HTTPS", &body),
    );
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// 503 for a name none of whose members (or whose only server) can take a request: each
/// member, its state and its last error.
pub(crate) fn no_member(name: &Name, members: &[String], dashboard: &str) -> Response<ProxyBody> {
    let list: String = members
        .iter()
        .map(|m| format!("<li>{}</li>", escape(m)))
        .collect();
    let body = format!(
        "<p><b>{name}</b> cannot take requests now:</p><ul>{list}</ul>\
         <p>Each returns to rotation as it recovers; <code>wharf logs {name}</code> shows \
         the output.</p><p>The dashboard: <a href=\"{dashboard}\">{dashboard}</a></p>",
        name = escape(name.as_str()),
        dashboard = escape(dashboard),
    );
    respond(
        StatusCode::SERVICE_UNAVAILABLE,
        "text/html; charset=utf-8",
        page("503 no member available", &body),
    )
}

/// Any other error: the status, what happened, what to do, and the dashboard.
pub(crate) fn error(
    status: StatusCode,
    what: &str,
    hint: &str,
    dashboard: &str,
) -> Response<ProxyBody> {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let body = format!(
        "<p>{}</p><p>{}</p><p>The dashboard: <a href=\"{dashboard}\">{dashboard}</a></p>",
        escape(what),
        escape(hint),
        dashboard = escape(dashboard),
    );
    respond(status, "text/html; charset=utf-8", page(&title, &body))
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <link rel=\"icon\" href=\"data:,\"><title>{t}</title><style>{STYLE}</style></head>\
         <body><h1>{t}</h1>{body}<p><small>wharf</small></p></body></html>\n",
        t = escape(title)
    )
}

const STYLE: &str = "body{font:15px system-ui,sans-serif;margin:2em auto;max-width:80em;\
padding:0 1em;color:#222}h1{margin-bottom:.2em}\
table{border-collapse:collapse;width:100%}\
td,th{padding:.45em .7em;text-align:left;vertical-align:top;border-bottom:1px solid #ddd}\
th{font-weight:600;color:#555;font-size:13px;text-transform:uppercase;letter-spacing:.04em}\
code{background:#f3f3f3;padding:.1em .3em;border-radius:3px;overflow-wrap:anywhere}\
a.name{font-weight:600;font-size:16px}.sub{color:#666;font-size:13px;margin-top:.2em;\
overflow-wrap:anywhere}.bar{color:#555;margin-top:0}.nowrap,.nowrap .sub{white-space:nowrap}\
.state{display:inline-block;padding:.05em .5em;border-radius:1em;font-size:13px;\
background:#eee}.state.ready{background:#d7f5dd;color:#14532d}\
.state.starting,.state.restarting{background:#fdf0c8;color:#713f12}\
.state.failed,.state.unhealthy{background:#fde0e0;color:#7f1d1d}\
.member{font-size:13px;color:#555;white-space:nowrap}.state.alias{background:#e0ecfd;color:#1e3a8a}\
.live{font-size:13px;color:#14532d;margin-left:.6em}.live::before{content:'● '}\
.down{font-size:13px;color:#b91c1c;margin-left:.6em;font-weight:600}\
tr.warn td{background:#fff4e5;color:#7c2d12;border-bottom:1px solid #f5c58a}";

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str, about: crate::model::instance::About) -> Listed {
        Listed {
            instance: crate::model::instance::Instance {
                name: name.parse().unwrap(),
                pid: 10,
                member: None,
                sticky: false,
                restarts: false,
                child_pid: Some(11),
                mode: crate::model::mode::Mode::Env,
                state: crate::model::instance::State::Ready,
                sockets: [("http".to_string(), "127.0.0.1:4001".parse().unwrap())].into(),
                exposed: None,
                own_port: false,
                last_exit: None,
                declared: None,
                started_at: None,
                requests_before: None,
                about,
            },
            url: format!("http://{name}.localhost:7080"),
            alias: false,
            uptime_secs: 61,
            requests: 1,
        }
    }

    async fn html(r: Response<ProxyBody>) -> String {
        let body = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_dashboard_shows_command_dir_logs_and_warns_about_every_interface() {
        let about = crate::model::instance::About {
            command: vec!["python3".into(), "-c".into(), "print('<b>hi</b>')".into()],
            dir: Some("/src/my app".into()),
            log: None,
        };
        let mut exposed = listed("web", about);
        exposed.instance.exposed = Some("0.0.0.0:4001".parse().unwrap());
        exposed.instance.last_exit = Some("exited with code 3".into());
        let page = html(dashboard(
            &[exposed, listed("api", Default::default())],
            false,
        ))
        .await;
        let command = escape(r"python3 -c 'print('\''<b>hi</b>'\'')'");
        for shown in [
            &command,
            "in /src/my app",
            "the terminal of <code>wharf run</code>",
            "last exit: exited with code 3",
            "<b>web</b>: 0.0.0.0:4001 is every interface",
            "server pid 11",
            "wharf pid 10",
            "2 instances",
        ] {
            assert!(page.contains(shown), "{shown:?} is not on\n{page}");
        }
        assert_eq!(page.matches("every interface").count(), 1, "{page}");
        assert!(
            !page.contains("<b>hi</b>"),
            "markup from a command is escaped"
        );
    }

    #[tokio::test]
    async fn members_show_their_number_and_a_503_names_each() {
        let mut two = listed("api", Default::default());
        two.instance.member = Some(2);
        two.instance.state = crate::model::instance::State::Unhealthy;
        let page = html(dashboard(&[two], false)).await;
        assert!(page.contains("member 2"), "{page}");
        assert!(page.contains("state unhealthy"), "{page}");
        let api: Name = "api".parse().unwrap();
        let members = [
            "member 1 (wharf pid 10): ready, <refused>".to_string(),
            "member 2 (wharf pid 10): unhealthy, failing its health check".to_string(),
        ];
        let r = no_member(&api, &members, "http://localhost/");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let page = html(r).await;
        assert!(
            page.contains("member 1 (wharf pid 10): ready, &lt;refused&gt;"),
            "{page}"
        );
        assert!(page.contains("failing its health check"), "{page}");
        assert!(page.contains("wharf logs api"), "{page}");
    }

    #[test]
    fn commands_are_shown_as_a_shell_would_read_them() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shell_words(&argv(&["vite", "--port", "4001", "--host=127.0.0.1"])),
            "vite --port 4001 --host=127.0.0.1"
        );
        assert_eq!(
            shell_words(&argv(&["sh", "-c", "echo it's $HOME", ""])),
            r"sh -c 'echo it'\''s $HOME' ''"
        );
    }

    #[test]
    fn pages_carry_no_cors_headers() {
        let api: Name = "api".parse().unwrap();
        for r in [
            dashboard(&[], true),
            dashboard(&[], false),
            unknown_name(Err((&api, "b")), &[], "http://localhost/"),
            misdirected("127.0.0.1", "http://localhost/"),
        ] {
            assert!(
                r.headers()
                    .keys()
                    .all(|k| !k.as_str().starts_with("access-control"))
            );
        }
    }
}

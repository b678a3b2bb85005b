//! `h1test!`: ripgrep's `rgtest!` for wharf's two HTTP/1.1 engines. ripgrep runs each test
//! body once per regex engine; here each HTTP/1.1 case through the proxy is two tests, one
//! per engine, so that a failure names the engine and each can be run alone:
//!
//! ```text
//! h1test!(a_case, |sb: Sandbox| { … });
//! cargo test --test tests -- a_case        # both: it::proxy::a_case::lane, …::hyper
//! cargo test --test tests -- ::hyper       # every case, hyper's path only
//! ```
//!
//! The body gets a sandbox whose proxy uses that engine (`Sandbox::with_engine`); a test that
//! writes config.toml does it with `sb.config(…)`, which keeps the engine's setting.

/// `h1test!(NAME, |sb: Sandbox| BODY)`: the tests `NAME::lane` and `NAME::hyper`, BODY run
/// with a sandbox of each engine. Attributes before NAME (`#[ignore = "…"]`) go on both;
/// `h1test!(NAME, hyper: #[ignore = "…"], |sb: Sandbox| BODY)` puts one on hyper's only.
macro_rules! h1test {
    (@both [$($attr:meta)*] [$($hyper:meta)*] $name:ident, $fun:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$attr])*
            #[test]
            fn lane() {
                let run: fn(Sandbox) = $fun;
                run(Sandbox::with_engine(Engine::Lane));
            }

            $(#[$attr])*
            $(#[$hyper])*
            #[test]
            fn hyper() {
                let run: fn(Sandbox) = $fun;
                run(Sandbox::with_engine(Engine::Hyper));
            }
        }
    };
    ($(#[$attr:meta])* $name:ident, hyper: #[$hyper:meta], $fun:expr) => {
        h1test!(@both [$($attr)*] [$hyper] $name, $fun);
    };
    ($(#[$attr:meta])* $name:ident, $fun:expr) => {
        h1test!(@both [$($attr)*] [] $name, $fun);
    };
}

#[macro_use]
mod macros;

mod browser;
mod budget;
mod engines;
mod express;
mod fuzz;
mod hostile;
mod hosts;
mod http2;
mod https;
mod mcp;
mod members;
mod names;
mod pages;
#[cfg(target_os = "linux")]
mod park;
mod ports;
mod proxy;
mod reload;
mod replicas;
mod rules;
mod run;
mod service;
mod stop;
mod trust;
mod up;
pub mod util;
mod wild;

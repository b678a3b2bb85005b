mod proxy;
mod run;
mod service;
pub mod util;

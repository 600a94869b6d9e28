pub mod proto;
pub mod nar;

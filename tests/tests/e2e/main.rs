//! End-to-end tests: the real `kalam-server` binary on 127.0.0.1:0, real clients
//! (`kalam-client` and arrow-flight's `FlightSqlServiceClient`). One test binary on purpose:
//! linking is the slow step.

mod bench;
mod cli;
mod common;
mod config;
mod errors;
mod isolation;
mod live;
mod metrics;
mod protocol;
mod readme;
mod roles;
mod s3;
mod scale;
mod storage;
mod tls;

//! Hello world on the Lambda runtime: the reference the package bench (`packages`) measures
//! Handoff's functions against — what a Rust function costs before it does anything.
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        Ok::<Value, lambda_runtime::Error>(json!({"hello": event.payload}))
    }))
    .await
}

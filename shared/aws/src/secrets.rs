//! Secrets Manager behind [`SecretStore`]: the secret's string value, read by name or ARN.

use crate::error;
use async_trait::async_trait;
use handoff_ports::PortResult;
use handoff_ports::{SecretStore, SecretText};

pub struct SecretsManagerStore {
    client: aws_sdk_secretsmanager::Client,
}

impl SecretsManagerStore {
    pub fn new(client: aws_sdk_secretsmanager::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl SecretStore for SecretsManagerStore {
    async fn get(&self, name: &str) -> PortResult<Option<SecretText>> {
        let answer = self.client.get_secret_value().secret_id(name).send().await;
        match answer {
            Ok(output) => match output.secret_string() {
                Some(text) => Ok(Some(SecretText::new(text))),
                // Binary secrets are not credentials this gateway understands.
                None => Err(error::fault("secretsmanager", format!("secret '{name}' has no string value"))),
            },
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => Ok(None),
            Err(e) => Err(error::sdk("secretsmanager", &format!("GetSecretValue {name}"), e)),
        }
    }
}

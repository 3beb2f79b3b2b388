//! SNS behind [`TopicPublisher`]: a notice published to the topic a `notify` target names.

use crate::error;
use async_trait::async_trait;
use handoff_ports::{PortResult, TopicPublisher};

pub struct SnsTopicPublisher {
    client: aws_sdk_sns::Client,
}

impl SnsTopicPublisher {
    pub fn new(client: aws_sdk_sns::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl TopicPublisher for SnsTopicPublisher {
    async fn publish(&self, topic_arn: &str, subject: &str, message: &str) -> PortResult<()> {
        self.client
            .publish()
            .topic_arn(topic_arn)
            .subject(subject)
            .message(message)
            .send()
            .await
            .map_err(|e| error::sdk("sns", &format!("Publish {topic_arn}"), e))?;
        Ok(())
    }
}

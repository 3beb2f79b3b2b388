//! The schedule adapter (EventBridge Scheduler).

use super::*;

#[tokio::test]
async fn schedules_upsert_and_remove_idempotently() {
    let client = aws_sdk_scheduler::Client::new(&sdk().await);
    let group = unique("handoff");
    client.create_schedule_group().name(&group).send().await.expect("group");
    let arn = "arn:aws:lambda:us-east-1:123456789012:function:handoff-trigger";
    let role = "arn:aws:iam::123456789012:role/scheduler";
    let manager = EventBridgeScheduleManager::new(client.clone(), group.clone(), arn.into(), role.into());
    let c = code("NIGHTLY");
    let spec = |e: &str| ScheduleSpec { expression: e.into(), timezone: "Europe/Amsterdam".into() };
    manager.upsert(&c, &spec("cron(0 18 * * ? *)")).await.expect("create");
    manager.upsert(&c, &spec("rate(5 minutes)")).await.expect("update");
    let got = client.get_schedule().group_name(&group).name(schedule_name(&c)).send().await.expect("get");
    assert_eq!(got.schedule_expression(), Some("rate(5 minutes)"));
    assert_eq!(got.schedule_expression_timezone(), Some("Europe/Amsterdam"));
    let target = got.target().expect("target");
    assert_eq!(target.arn(), arn);
    assert_eq!(target.role_arn(), role);
    let input: serde_json::Value = serde_json::from_str(target.input().expect("input")).expect("json");
    assert_eq!(input, serde_json::json!({"integrationCode": "NIGHTLY"}));
    manager.remove(&c).await.expect("remove");
    manager.remove(&c).await.expect("remove again");
    assert!(client.get_schedule().group_name(&group).name(schedule_name(&c)).send().await.is_err());
}

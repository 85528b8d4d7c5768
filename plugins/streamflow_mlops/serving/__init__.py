"""The churn service runtime behind bentos/churn_service: errors, feature reads, the champion, scoring, HTTP guards."""

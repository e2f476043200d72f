//! gRPC statuses as errors for people.

/// One line naming the gRPC code and the server's message, e.g.
/// `NotFound: slots icae:v1:… not found`. (`Status`'s own `Display` describes the code in
/// words and quotes the message, so the code's name, what scripts and docs search for, is
/// missing.)
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    #[test]
    fn names_the_code_and_the_message() {
        let err = status_error(Status::new(Code::NotFound, "no slots at icae:v1:missing"));
        assert_eq!(err.to_string(), "NotFound: no slots at icae:v1:missing");
    }

    #[test]
    fn is_one_line_for_a_one_line_message() {
        let err = status_error(Status::invalid_argument("max_new_tokens is 0"));
        assert_eq!(err.to_string(), "InvalidArgument: max_new_tokens is 0");
        assert!(!format!("{err:#}").contains('\n'));
    }
}

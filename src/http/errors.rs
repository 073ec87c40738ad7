//! HTTP errors: a [`Rejection`] answers with the status of its code and the
//! contract's JSON body (`{"error":{"code","message"}}`), and the middleware
//! that turns actix-web's own plain-text errors into the same shape.

use crate::protocol::{ErrorCode, Rejection};
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

impl ResponseError for Rejection {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code())
            .content_type("application/json")
            .body(self.to_http_body())
    }
}

/// An error answer after which the connection closes: the rest of the
/// request is not read.
pub fn closing_error(rejection: &Rejection) -> HttpResponse {
    let mut response = rejection.error_response();
    response
        .head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    response
}

/// Marks a connection accepted over `limits.connections_per_ip`: every
/// request on it is answered 429 and the connection closed.
pub struct OverConnectionCap(pub Rejection);

/// Runs around every handler: refuses requests on connections over the
/// per-IP cap, turns actix-web's own plain-text errors (a bad header, an
/// unknown method) into the contract's JSON errors, and marks every answer
/// `nosniff`. (Slow heads are cut by actix-http's `client_request_timeout`,
/// slow bodies where bodies are read: `read_body`.)
pub async fn guard(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<actix_web::body::BoxBody>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    if let Some(over) = req.conn_data::<OverConnectionCap>() {
        let response = closing_error(&over.0);
        return Ok(actix_web::dev::ServiceResponse::new(
            req.request().clone(),
            response,
        ));
    }
    // No clone of the request may be alive here: routing needs it unshared.
    let mut response = next.call(req).await?;
    if response.status().is_client_error() || response.status().is_server_error() {
        let is_json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        if !is_json {
            response = response.map_body(|head, _| {
                let rejection = rejection_for_status(head.status);
                head.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                actix_web::body::BoxBody::new(rejection.to_http_body())
            });
        }
    }
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

/// The contract's error for an HTTP status actix answered by itself.
pub fn rejection_for_status(status: StatusCode) -> Rejection {
    match status {
        StatusCode::REQUEST_TIMEOUT => Rejection::new(
            ErrorCode::RequestTimeout,
            "the request took too long to arrive",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => {
            Rejection::new(ErrorCode::PayloadTooLarge, "the request body is too large")
        }
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => Rejection::new(
            ErrorCode::HeadersTooLarge,
            "the request's headers are too large",
        ),
        StatusCode::NOT_FOUND => Rejection::new(ErrorCode::NotFound, "no such endpoint"),
        StatusCode::METHOD_NOT_ALLOWED => {
            Rejection::new(ErrorCode::NotFound, "no such endpoint for this method")
        }
        s if s.is_server_error() => Rejection::new(
            ErrorCode::Unavailable,
            "the server could not answer this request",
        ),
        _ => Rejection::new(ErrorCode::BadRequest, "the request is malformed"),
    }
}

"""What `POST /payments` accepts, as a table (rinha/payments.py); the HTTP side is in
test_payments_api.py."""

import pytest

from rinha.payments import BadInput, parse_payment

UUID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"

ACCEPTED = [
    (b'{"correlationId":"%s","amount":19.90}' % UUID.encode(), 1990),
    (b'{"correlationId":"%s","amount":20.05}' % UUID.encode(), 2005),
    (b'{"correlationId":"%s","amount":1}' % UUID.encode(), 100),
    (b'{"correlationId":"%s","amount":0.01,"extra":true}' % UUID.encode(), 1),
    (b'{"correlationId":"%s","amount":99999999.99}' % UUID.upper().encode(), 9999999999),
]

REFUSED = [
    (b"", 400),
    (b"not json", 400),
    (b"[1,2]", 400),
    (b'{"amount":19.90}', 422),
    (b'{"correlationId":"abc","amount":19.90}', 422),
    (b'{"correlationId":123,"amount":19.90}', 422),
    (b'{"correlationId":"%s"}' % UUID.encode(), 422),
    (b'{"correlationId":"%s","amount":"19.90"}' % UUID.encode(), 422),
    (b'{"correlationId":"%s","amount":true}' % UUID.encode(), 422),
    (b'{"correlationId":"%s","amount":0}' % UUID.encode(), 422),
    (b'{"correlationId":"%s","amount":-1}' % UUID.encode(), 422),
    (b'{"correlationId":"%s","amount":19.901}' % UUID.encode(), 422),
    (b'{"correlationId":"%s","amount":1e300}' % UUID.encode(), 422),
    (b'{"correlationId":"%s","amount":1.7e307}' % UUID.encode(), 422),
    (b'{"correlationId":"%s","amount":NaN}' % UUID.encode(), 400),
    (b'{"correlationId":"%s","amount":null}' % UUID.encode(), 422),
]


@pytest.mark.parametrize(("body", "cents"), ACCEPTED)
def test_accepted(body: bytes, cents: int) -> None:
    payment = parse_payment(body)
    assert payment.cents == cents
    assert payment.correlation_id == UUID


@pytest.mark.parametrize(("body", "status"), REFUSED)
def test_refused(body: bytes, status: int) -> None:
    with pytest.raises(BadInput) as caught:
        parse_payment(body)
    assert caught.value.status == status
    assert caught.value.reason

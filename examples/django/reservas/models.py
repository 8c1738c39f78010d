"""The two models the signal handlers publish about."""

from django.db import models


class Tour(models.Model):
    nombre = models.CharField(max_length=200)
    destino = models.CharField(max_length=200)
    precio = models.DecimalField(max_digits=10, decimal_places=2)

    def __str__(self) -> str:
        return self.nombre


class Reserva(models.Model):
    tour = models.ForeignKey(Tour, on_delete=models.CASCADE, related_name="reservas")
    # The customer's id, the same string as the `sub` of their wshub token.
    usuario_id = models.CharField(max_length=64)
    personas = models.PositiveIntegerField(default=1)
    creada = models.DateTimeField(auto_now_add=True)
